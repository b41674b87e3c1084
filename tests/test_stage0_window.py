"""Stage 0 `--mode window` on the bundled sample, checked against independent oracles: the
sample's generator for the records, TRIE_TOKENIZER for every token count, rank_bm25 for scores."""
import subprocess
import sys
import textwrap

import numpy as np
import orjson
import pytest
from eval_helpers import REPO, SAMPLE
from stage0_helpers import ref_render, ref_scores

from long_ctx.stage0.driver import Stage0Config, main
from long_ctx.stage0.modes.window import SEPARATOR, separator_is_additive
from long_ctx.stage0.synthetic_nq import generate
from long_ctx.world_tokenizer import trie_tokenizer

T, TOL, K = 1024, 0.05, 3
KEYS = ["mode", "question", "answer", "long_answer", "positive", "negative", "negatives", "gold_id",
        "positive_doc_ids", "negative_doc_ids", "gold_position", "positive_tokens", "negative_tokens",
        "context_tokens", "num_documents", "line_number"]


def window_config(out, **kw) -> Stage0Config:
    base = dict(mode="window", context_tokens=T, context_tolerance=TOL, num_negatives=K, num_splits=1,
                progress=False)
    return Stage0Config(str(kw.pop("input_file", SAMPLE)), str(out), **{**base, **kw})


@pytest.fixture(scope="module")
def truth():
    return [s.record for s in generate(200)]  # the sample's generator: the ground truth


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("window") / "win.jsonl"
    stats = main(window_config(out))
    return out, stats, [orjson.loads(line) for line in out.read_bytes().splitlines()]


def _excluded(rec, i: int) -> bool:
    """May document i be left out of a negative run: the gold, a copy of it, one holding the
    answer (filter on), one quoting the gold, an empty one."""
    gold, d = rec.documents[rec.gold_id - 1], rec.documents[i]
    return (i == rec.gold_id - 1 or d.split() == gold.split() or rec.answer.lower() in d.lower()
            or gold in d or not d)


def test_windows_on_the_sample(run, truth):
    _, stats, rows = run
    trie = trie_tokenizer()
    assert len(rows) > 150 and stats["records_written"] == len(rows)
    for row in rows:
        rec = truth[row["line_number"]]
        docs, gold = rec.documents, rec.documents[rec.gold_id - 1]
        assert list(row) == KEYS and row["mode"] == "window" and row["context_tokens"] == T
        assert (row["question"], row["answer"], row["gold_id"], row["num_documents"]) == \
            (rec.question, rec.answer, rec.gold_id, len(docs))
        # The windows are their documents joined by the separator.
        assert row["positive"] == SEPARATOR.join(docs[i - 1] for i in row["positive_doc_ids"])
        assert row["negatives"] == [SEPARATOR.join(docs[i - 1] for i in ids) for ids in row["negative_doc_ids"]]
        assert row["negative"] == row["negatives"][0] and 1 <= len(row["negatives"]) <= K
        # The gold exactly once in the positive, never in a negative; no negative has the answer.
        assert row["positive"].count(gold) == 1 and rec.gold_id in row["positive_doc_ids"]
        for neg in row["negatives"]:
            assert gold not in neg and rec.answer.lower() not in neg.lower()
        # Token counts, with the reference tokenizer.
        ids = trie.encode(row["positive"])
        assert len(ids) == row["positive_tokens"] and (1 - TOL) * T <= len(ids) <= T
        for neg, n in zip(row["negatives"], row["negative_tokens"]):
            assert len(trie.encode(neg)) == n and abs(n - len(ids)) <= TOL * len(ids)
        # gold_position: the gold's first token over the positive's tokens, from the text.
        start = len(row["positive"][:row["positive"].index(gold)].encode())
        ends = np.cumsum([len(trie.idx2token[i]) for i in ids])
        before = int(np.searchsorted(ends, start, "right"))
        assert before == 0 or ends[before - 1] == start  # the gold starts on a token boundary
        assert row["gold_position"] == before / len(ids)
        # Negatives: pairwise disjoint runs of consecutive allowed documents, in pool order.
        seen = set()
        for window in row["negative_doc_ids"]:
            assert not seen & set(window)
            seen |= set(window)
            for a, b in zip(window, window[1:]):
                assert a < b and all(_excluded(rec, j - 1) for j in range(a + 1, b))
            assert not any(_excluded(rec, j - 1) for j in window)
        # The positive's other documents: a run of the pool with the gold inserted somewhere.
        others = [i for i in row["positive_doc_ids"] if i != rec.gold_id]
        for a, b in zip(others, others[1:]):
            assert a < b and all(j == rec.gold_id or gold in docs[j - 1] or docs[j - 1].split() == gold.split()
                                 for j in range(a + 1, b))


def test_stats_and_length_balance(run):
    _, stats, rows = run
    diffs = [r["positive_tokens"] - n for r in rows for n in r["negative_tokens"]]
    d = stats["positive_minus_negative_tokens"]
    assert d["pairs"] == len(diffs)
    assert d["mean_signed"] == pytest.approx(np.mean(diffs), abs=1e-3)
    assert d["mean_absolute"] == pytest.approx(np.mean(np.abs(diffs)), abs=1e-3)
    # Length must not give the label away: no systematic sign.
    assert abs(d["mean_signed"]) < 0.15 * d["mean_absolute"]
    assert 0.4 < np.mean(np.array(diffs) > 0) / max(np.mean(np.array(diffs) != 0), 1e-9) < 0.6
    hist = np.histogram([r["gold_position"] for r in rows], bins=10, range=(0, 1))[0]
    assert stats["gold_position_histogram"]["counts"] == hist.tolist()
    assert stats["positive_tokens"]["count"] == len(rows)
    assert stats["positive_tokens"]["max"] == max(r["positive_tokens"] for r in rows)
    assert stats["negative_tokens"]["count"] == len(diffs)
    assert stats["records_with_fewer_negatives"] == sum(len(r["negatives"]) < K for r in rows)
    assert stats["records_written"] + stats["records_skipped"] == 200
    # Uniform: each third of [0, 1) holds 20-47 % of the positives.
    thirds = np.bincount(np.minimum((np.array([r["gold_position"] for r in rows]) * 3).astype(int), 2),
                         minlength=3) / len(rows)
    assert all(0.20 <= t <= 0.47 for t in thirds), thirds


FORK_SCRIPT = textwrap.dedent("""
    import sys
    from long_ctx.world_tokenizer import get_tokenizer
    get_tokenizer().encode_batch(["a rayon pool now runs in this process"] * 64)
    from long_ctx.stage0.driver import Stage0Config, main
    main(Stage0Config(sys.argv[1], sys.argv[2], mode="window", context_tokens=1024, context_tolerance=0.05,
                      num_negatives=3, num_splits=2, progress=False))
""")


def test_two_workers_byte_identical_and_fork_safe(run, tmp_path):
    # The parent has started pyrwkv's rayon pool before forking its workers (as a process that
    # tokenized with encode_batch would have): the workers must neither hang nor differ.
    out = tmp_path / "win2.jsonl"
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(SAMPLE), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes() == run[0].read_bytes()


def test_natural_keeps_pool_order_and_strategies_differ(run, truth, tmp_path):
    out = tmp_path / "nat.jsonl"
    main(window_config(out, gold_position="natural", negative_strategy="hardest", limit=60))
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    least = {r["line_number"]: r for r in run[2]}
    best = {"hardest": [], "least": []}
    for row in rows:
        rec = truth[row["line_number"]]
        assert row["positive_doc_ids"] == sorted(row["positive_doc_ids"])  # the pool's own order
        if rec.gold_id == 1:
            assert row["gold_position"] == 0.0
        if rec.gold_id == len(rec.documents):
            assert row["positive_doc_ids"][-1] == rec.gold_id
        scores = ref_scores(rec.documents, rec.question)
        if row["line_number"] in least:
            best["hardest"].append(max(scores[i - 1] for i in row["negative_doc_ids"][0]))
            best["least"].append(max(scores[i - 1] for i in least[row["line_number"]]["negative_doc_ids"][0]))
    assert len(best["hardest"]) >= 30
    assert np.mean(best["hardest"]) > np.mean(best["least"]) + 1.0
    # random: seeded, so the same seed gives the same file and another seed another.
    outs = []
    for seed in (1, 1, 2):
        o = tmp_path / f"r{len(outs)}.jsonl"
        main(window_config(o, negative_strategy="random", seed=seed, limit=20))
        outs.append(o.read_bytes())
    assert outs[0] == outs[1] != outs[2]


def _record_line(docs, gold_id, answer="zebra"):
    text = ref_render("what is the answer", answer, "long answer", docs, gold_id)
    return orjson.dumps({"text": text})


def test_small_pools_are_skipped_by_reason(tmp_path):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()

    def doc(n_words, k=0):
        return " ".join(words[(i + k) % len(words)] for i in range(n_words))

    lines = [
        _record_line([doc(30, k) for k in range(5)], 2),  # ~150 tokens in all: too short
        _record_line([doc(600, 1), doc(20)], 1),  # the gold alone is longer than T
        _record_line([doc(110), doc(110, 1)], 1),  # a positive, but too little else
        _record_line(["", doc(30)], 1),  # an empty gold (parsed as an empty document)
        _record_line([doc(110, k) for k in range(9)], 3),  # fine
    ]
    inp = tmp_path / "small.jsonl"
    inp.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "o.jsonl"
    stats = main(window_config(out, input_file=inp, context_tokens=300, context_tolerance=0.2, num_negatives=1))
    assert stats["skipped_by_reason"] == {"pool_shorter_than_context": 1, "gold_longer_than_context": 1,
                                          "no_negative_window": 1, "empty_gold_document": 1}
    assert [orjson.loads(x)["line_number"] for x in out.read_bytes().splitlines()] == [4]


def test_separator_is_additive_on_the_vocab_and_the_check_can_fail():
    vocab = list(trie_tokenizer().idx2token.values())
    assert separator_is_additive(vocab)
    assert not separator_is_additive(vocab + [b"\nThe"])  # a newline continuing into text
    assert not separator_is_additive(vocab + [b"end.\n\n"])  # takes both newlines
    assert not separator_is_additive([t for t in vocab if t != "…".encode()])  # "…\n" without "…"


@pytest.mark.parametrize("bad", [dict(context_tokens=0), dict(context_tolerance=1.0),
                                 dict(context_tolerance=-0.1), dict(gold_position="middle")])
def test_invalid_window_options_are_rejected(tmp_path, bad):
    with pytest.raises(ValueError):
        main(window_config(tmp_path / "o.jsonl", **bad))
