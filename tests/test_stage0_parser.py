import re
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stage0_helpers import ref_render

from long_ctx.common.line_reader import iter_lines
from long_ctx.stage0.nq_format import SKIP_REASONS, NQRecord, SkipRecord, parse_line, parse_text
from long_ctx.stage0.synthetic_nq import broken_lines, generate

DATA = Path(__file__).resolve().parents[1] / "data"


def rec(docs, gold=1, q="who made it", a="Ana Sol", la="Made by Ana Sol. Really."):
    return NQRecord(q, a, la, list(docs), gold)


def roundtrip(r: NQRecord) -> NQRecord:
    return parse_text(ref_render(r.question, r.answer, r.long_answer, r.documents, r.gold_id))


def test_bundled_sample_parses_to_the_generated_records():
    # The generator's structured records are the oracle for the rendered, compressed file.
    truth = [s.record for s in generate(200)]
    parsed = [parse_line(line) for _, line in iter_lines(DATA / "nq_sample.jsonl.zst")]
    assert parsed == truth
    sizes = {len(r.documents) for r in parsed}
    assert min(sizes) == 10 and max(sizes) == 200
    positions = {(r.gold_id == 1, r.gold_id == len(r.documents)) for r in parsed}
    assert {(True, False), (False, True), (False, False)} <= positions
    keys = {tuple(sorted(orjson.loads(line))) for _, line in iter_lines(DATA / "nq_sample.jsonl.zst")}
    assert keys == {("completion", "prompt", "text"), ("text",), ("completion", "prompt")}


def test_hard_cases_in_documents_and_long_answer():
    docs = [
        "(Title: Ærø (island, Denmark)) Ærø is an island; see Document [3] and Document for more.",
        "Trap: Question: who? Answer: nobody. Long Answer: none. Gold Document ID: 9",
        "First line.\nDocument [1] is cited on its own line.\nQuestion: not the real one",
        "",
        "Ends the list: Document [5]",
    ]
    la = "It is an island (55 km²); it has 6,000 people.\nSecond paragraph: \"quoted\", e.g. this."
    for gold in (1, 3, 5):
        r = rec(docs, gold, a="Ærø", la=la)
        assert roundtrip(r) == r
    # The long answer keeps its first character; documents do not accumulate each other.
    assert roundtrip(rec(docs, la="X marks it.")).long_answer == "X marks it."
    assert roundtrip(rec(docs)).documents[1] == docs[1]


@pytest.mark.parametrize("n_docs", [1, 10, 200])
def test_pool_sizes(n_docs):
    r = rec([f"(Title: T{i}) text {i} Document [{i + 2}] mid-line" for i in range(n_docs)], n_docs)
    assert roundtrip(r) == r


def test_prompt_completion_and_text_rows_agree():
    r = rec(["a doc", "b doc"], 2)
    text = ref_render(r.question, r.answer, r.long_answer, r.documents, r.gold_id)
    cut = text.index("\nAnswer:")
    rows = [{"text": text}, {"prompt": text[:cut], "completion": text[cut:]},
            {"prompt": "ignored", "completion": "ignored", "text": text}]
    for row in rows:
        assert parse_line(orjson.dumps(row)) == r
        assert parse_line(orjson.dumps(row).decode()) == r


def test_stray_line_marker_beyond_the_last_document_is_broken_numbering():
    r = rec(["one\nDocument [7] stray", "two"], 1)
    with pytest.raises(SkipRecord) as err:
        roundtrip(r)
    assert err.value.reason == "non_consecutive_document_numbers"


def test_each_broken_line_is_skipped_with_its_reason():
    committed = (DATA / "nq_broken.jsonl").read_bytes().split(b"\n")[:-1]
    cases = broken_lines()
    assert committed == [line for _, line in cases]
    seen = set()
    for reason, line in cases:
        if reason in ("", "no_negative_candidate"):  # parse fine; the latter fails in stage 0
            assert isinstance(parse_line(line), NQRecord)
            continue
        with pytest.raises(SkipRecord) as err:
            parse_line(line)
        assert err.value.reason == reason
        seen.add(reason)
    assert seen == set(SKIP_REASONS)


# Field text for the round trip: anything, including the trap words and newlines, except what
# makes the format itself ambiguous (see nq_format's docstring).
_pieces = st.sampled_from([
    "Document", "Document [2]", "Document [3] ", "Question:", "Answer:", "Long Answer:", "(Title: ",
    ")", "é", "Ω", "İ", "😀", " ", "\t", "\n", "\nDocument [1] ", "\nQuestion: x", "\nAnswer: y", "\nDocument [2]", "\nDocument [3] ",
    "Gold Document ID: 1", "[", "]", "0", "9",
])
_text = st.lists(st.one_of(_pieces, st.text(max_size=6)), max_size=8).map("".join)
_line = _text.map(lambda s: s.replace("\n", " ").replace("\r", " "))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(_text, min_size=1, max_size=6), q=_line, a=_line, la=_text, data=st.data()
)
def test_roundtrip_random_records(docs, q, a, la, data):
    # Ambiguous by construction, hence excluded: document n holding a line "Document [n+1]"
    # (that line *is* the next marker) or a line "Document [k]" with k > N (broken numbering),
    # and a long answer holding a line "Long Answer:".
    for n, d in enumerate(docs, 1):
        for k in re.findall(r"\nDocument \[([0-9]{1,11})\]", d):
            assume(int(k) != n + 1 and int(k) <= len(docs))
    assume("\nLong Answer:" not in la)
    gold = data.draw(st.integers(1, len(docs)))
    # Fields are rendered as drawn (surrounding whitespace included) and come back stripped.
    parsed = parse_text(ref_render(q, a, la, docs, gold))
    assert parsed == NQRecord(q.strip(), a.strip(), la.strip(), [d.strip() for d in docs], gold)
