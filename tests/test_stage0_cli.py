import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import zstandard
from stage0_helpers import ref_negatives, ref_scores

from long_ctx.stage0.driver import Stage0Config, main
from long_ctx.stage0.synthetic_nq import broken_lines, generate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "nq_sample.jsonl.zst"
KEYS = ["question", "answer", "long_answer", "positive", "negative", "negatives", "gold_id",
        "negative_ids", "num_documents", "line_number"]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "long_ctx" / "0_create_q_p_n.py"), *map(str, args)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )


def check_against_oracle(path, strategy="least", k=1, tokenizer="words", filter_docs=True):
    truth = [s.record for s in generate(200)]  # the sample's generator is the ground truth
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["line_number"] for r in rows] == list(range(len(truth)))
    for row, rec in zip(rows, truth):
        assert list(row) == KEYS
        scores = ref_scores(rec.documents, rec.question, tokenizer)
        expected = ref_negatives(scores, rec.documents, rec.gold_id - 1, rec.answer, strategy, k, filter_docs)
        assert row["negative_ids"] == [i + 1 for i in expected]
        assert row["negatives"] == [rec.documents[i] for i in expected]
        assert row["negative"] == row["negatives"][0]
        assert row["positive"] == rec.documents[rec.gold_id - 1]
        assert (row["question"], row["answer"], row["long_answer"]) == (rec.question, rec.answer, rec.long_answer)
        assert (row["gold_id"], row["num_documents"]) == (rec.gold_id, len(rec.documents))


def test_cli_on_bundled_sample_is_correct_and_worker_independent(tmp_path):
    outs = []
    for n in (1, 3):
        out = tmp_path / f"qpn_{n}.jsonl"
        res = run_cli("--input_file", SAMPLE, "--output_file", out, "--num_splits", n, "--no_progress")
        assert res.returncode == 0, res.stderr
        assert "records written  200" in res.stdout
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    check_against_oracle(tmp_path / "qpn_1.jsonl")
    stats = orjson.loads((tmp_path / "qpn_3.jsonl.stats.json").read_bytes())
    assert stats["records_written"] == 200 and stats["records_skipped"] == 0
    assert stats["workers"] == 3
    assert (stats["documents_per_record"]["min"], stats["documents_per_record"]["max"]) == (10, 200)


@pytest.mark.parametrize("strategy,k,tokenizer,filter_docs", [
    ("hardest", 3, "whitespace", True),
    ("least", 2, "words", False),
])
def test_strategies_tokenizers_and_filter(tmp_path, strategy, k, tokenizer, filter_docs):
    out = tmp_path / "o.jsonl"
    main(Stage0Config(str(SAMPLE), str(out), num_splits=1, negative_strategy=strategy,
                      num_negatives=k, bm25_tokenizer=tokenizer, filter_answer_docs=filter_docs,
                      progress=False))
    check_against_oracle(out, strategy, k, tokenizer, filter_docs)


def test_random_strategy_does_not_depend_on_workers(tmp_path):
    outs = []
    for n in (1, 2):
        out = tmp_path / f"r{n}.jsonl"
        main(Stage0Config(str(SAMPLE), str(out), num_splits=n, negative_strategy="random",
                          num_negatives=4, seed=5, progress=False, limit=60))
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    rows = [orjson.loads(x) for x in outs[0].splitlines()]
    assert len(rows) == 60
    for row, rec in zip(rows, (s.record for s in generate(60))):
        cands = ref_negatives([0.0] * len(rec.documents), rec.documents, rec.gold_id - 1,
                              rec.answer, "least", len(rec.documents))
        ids = [i - 1 for i in row["negative_ids"]]
        assert len(set(ids)) == len(ids) == min(4, len(cands))
        assert set(ids) <= set(cands)


def test_broken_lines_are_counted_by_reason(tmp_path):
    out = tmp_path / "b.jsonl"
    stats = main(Stage0Config(str(ROOT / "data" / "nq_broken.jsonl"), str(out), num_splits=2, progress=False))
    expected = {reason: 1 for reason, _ in broken_lines() if reason}
    assert stats["skipped_by_reason"] == expected
    assert stats["records_written"] == 1 and len(out.read_bytes().splitlines()) == 1
    assert orjson.loads((tmp_path / "b.jsonl.stats.json").read_bytes())["skipped_by_reason"] == expected


def test_truncated_input_fails_clearly_and_writes_nothing(tmp_path):
    blob = SAMPLE.read_bytes()
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(blob[: len(blob) * 2 // 3])
    out = tmp_path / "out" / "qpn.jsonl"
    res = run_cli("--input_file", cut, "--output_file", out, "--num_splits", 2, "--no_progress")
    assert res.returncode != 0
    assert "cut.jsonl.zst" in res.stderr and "truncated" in res.stderr
    assert "records had been processed" in res.stderr
    assert not out.exists() and not Path(f"{out}.stats.json").exists()
    assert list(out.parent.iterdir()) == []  # no temp file left behind


def test_plain_jsonl_and_limit(tmp_path):
    plain = tmp_path / "in.jsonl"
    plain.write_bytes(zstandard.ZstdDecompressor().decompress(SAMPLE.read_bytes(), max_output_size=1 << 30))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    main(Stage0Config(str(plain), str(a), num_splits=1, limit=7, progress=False))
    main(Stage0Config(str(SAMPLE), str(b), num_splits=1, limit=7, progress=False))
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_bytes().splitlines()) == 7


@pytest.mark.parametrize("bad", [dict(num_negatives=0), dict(negative_strategy="best"),
                                 dict(bm25_tokenizer="bpe"), dict(seed=-1)])
def test_invalid_options_are_rejected(tmp_path, bad):
    with pytest.raises(ValueError):
        main(Stage0Config(str(SAMPLE), str(tmp_path / "o.jsonl"), progress=False, **bad))
