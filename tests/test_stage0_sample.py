from pathlib import Path

import zstandard

from long_ctx.common.line_reader import iter_lines
from long_ctx.stage0.nq_format import parse_line
from long_ctx.stage0.synthetic_nq import generate, to_json_line

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "nq_sample.jsonl.zst"


def test_committed_sample_is_what_the_generator_writes():
    # data/make_sample.py is deterministic: regenerating gives the committed content.
    content = zstandard.ZstdDecompressor().decompress(SAMPLE.read_bytes(), max_output_size=1 << 30)
    expected = b"".join(to_json_line(s.record, i) + b"\n" for i, s in enumerate(generate(200)))
    assert content == expected


def test_sample_size_and_hard_cases():
    assert SAMPLE.stat().st_size < 2_000_000
    records = [parse_line(line) for _, line in iter_lines(SAMPLE)]
    assert 150 <= len(records) <= 300
    assert all(10 <= len(r.documents) <= 200 for r in records)
    docs = [d for r in records for d in r.documents]

    def some(pred):
        return any(pred(d) for d in docs)

    assert some(lambda d: "Document [3]" in d and "Question:" in d and "Answer:" in d)
    assert some(lambda d: "\nQuestion:" in d)  # own newlines, a line even starting "Question:"
    assert some(lambda d: d.startswith("(Title: ") and "(" in d[8:d.index(")")] and not d[:40].isascii())
    assert any(r.long_answer.count(".") >= 2 and ";" in r.long_answer for r in records)
    # Distractors quoting the answer in another case exist (the filter must drop them).
    assert any(
        any(r.answer.upper() in d for i, d in enumerate(r.documents) if i != r.gold_id - 1)
        for r in records
    )
