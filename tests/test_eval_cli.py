"""The evaluator (BM25 vs rank_bm25, metrics, skips, JSON/PNG, CLI) and the rerank CLI round trip."""
import math
import re
import runpy
import sys

import numpy as np
import orjson
import pytest
from eval_helpers import BROKEN, REPO, sample_lines, shared_assets, stub_ce_config
from rank_bm25 import BM25Okapi

from cross_encoder.evaluation.evaluator import EvalConfig
from cross_encoder.evaluation.evaluator import main as evaluate
from cross_encoder.serving.rerank_cli import RerankConfig
from cross_encoder.serving.rerank_cli import main as rerank
from cross_encoder.serving.reranker import Reranker
from long_ctx.stage0.nq_format import SkipRecord, parse_line

EVAL_SCRIPT = REPO / "cross_encoder" / "2_evaluate_ce.py"
RERANK_SCRIPT = REPO / "cross_encoder" / "3_rerank.py"
METRICS = ("mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10", "mean_gold_rank")




class ConstantReranker:
    """Scores every document 0: with ties to the lower index, the gold's rank is its document number."""
    max_length, sep, cls, pad, device, ce_config = 64, 2, 1, 0, "cpu", stub_ce_config()

    def score_many(self, pools):
        return [[0.0] * len(documents) for _, documents in pools]


def oracle_rank(documents, question, gold_index):
    tok = lambda s: [m.lower() for m in re.findall(r"\w+", s)]  # noqa: E731  stage 0's `words`
    scores = BM25Okapi([tok(d) for d in documents]).get_scores(tok(question))
    g = scores[gold_index]
    return 1 + int(np.sum(scores > g)) + int(np.sum(scores[:gold_index] == g))


def _parses(line):
    try:
        parse_line(line)
        return True
    except SkipRecord:
        return False


def mixed_file(tmp_path, n_sample=8):
    """Sample lines with the broken lines between them; returns (path, raw lines)."""
    broken = BROKEN.read_bytes().splitlines()
    lines = sample_lines(n_sample)
    mixed = lines[:3] + broken + lines[3:]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    return path, mixed


def expected_skips(lines, max_docs=None):
    counts, kept = {}, []
    for line in lines:
        try:
            rec = parse_line(line)
        except SkipRecord as exc:
            counts[exc.reason] = counts.get(exc.reason, 0) + 1
            continue
        if max_docs and rec.gold_id > max_docs:
            counts["gold_beyond_max_docs"] = counts.get("gold_beyond_max_docs", 0) + 1
            continue
        kept.append(rec)
    return counts, kept


def test_bm25_and_tie_ranks_and_skip_counts(tmp_path, capsys):
    path, lines = mixed_file(tmp_path)
    pq = tmp_path / "pq.jsonl"
    res = evaluate(EvalConfig(model_file=str(BROKEN), adapter="unused", input_file=str(path),
                              output_json=str(tmp_path / "r.json"), per_question=str(pq), progress=False),
                   reranker=ConstantReranker())
    skips, kept = expected_skips(lines)
    assert res["skipped"] == skips and len(skips) >= 10  # every reason of the broken file
    assert res["num_questions"] == len(kept) and res["lines_read"] == len(lines)
    rows = [orjson.loads(x) for x in pq.read_bytes().splitlines()]
    assert [r["gold_id"] for r in rows] == [k.gold_id for k in kept]
    bm25_ranks = [oracle_rank(k.documents, k.question, k.gold_id - 1) for k in kept]
    assert [r["gold_rank"]["bm25"] for r in rows] == bm25_ranks
    # Constant scores: ties go to the lower document number, so the gold ranks at its own number.
    ce_ranks = [k.gold_id for k in kept]
    assert [r["gold_rank"]["cross_encoder"] for r in rows] == ce_ranks
    # The length baseline: longest first (str.split() words), ties to the lower document number.
    length_ranks = [sorted(range(len(k.documents)), key=lambda i: (-len(k.documents[i].split()), i)).index(k.gold_id - 1)
                    + 1 for k in kept]
    assert [r["gold_rank"]["length"] for r in rows] == length_ranks
    for system, ranks in (("bm25", bm25_ranks), ("cross_encoder", ce_ranks), ("length", length_ranks)):
        m = res[system]
        assert m["mrr@10"] == pytest.approx(np.mean([1 / r if r <= 10 else 0 for r in ranks]))
        assert m["recall@5"] == pytest.approx(np.mean([r <= 5 for r in ranks]))
        assert m["mean_gold_rank"] == pytest.approx(np.mean(ranks))
        # Breakdowns partition the questions.
        assert sum(v["n"] for v in m["by_gold_position"].values()) == len(kept)
        assert sum(v["n"] for v in m["by_pool_size"].values()) == len(kept)
    saved = orjson.loads((tmp_path / "r.json").read_bytes())
    assert saved["bm25"]["mrr@10"] == res["bm25"]["mrr@10"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "mrr@10" in out and "BM25" in out and "length" in out and "invalid_json 1" in out


def test_max_docs_and_limit(tmp_path):
    path, lines = mixed_file(tmp_path, n_sample=12)
    k = 12
    pq = tmp_path / "pq.jsonl"
    res = evaluate(EvalConfig(model_file=str(BROKEN), adapter="unused", input_file=str(path), max_docs=k,
                              limit=len(lines) - 2, output_json=str(tmp_path / "r.json"), per_question=str(pq),
                              progress=False), reranker=ConstantReranker())
    skips, kept = expected_skips(lines[:-2], max_docs=k)
    assert skips.get("gold_beyond_max_docs", 0) > 0, "the sample lines chosen must exercise the cut"
    assert res["skipped"] == skips
    rows = [orjson.loads(x) for x in pq.read_bytes().splitlines()]
    assert [r["pool_size"] for r in rows] == [min(len(r.documents), k) for r in kept]
    assert [r["gold_rank"]["bm25"] for r in rows] == \
        [oracle_rank(r.documents[:k], r.question, r.gold_id - 1) for r in kept]


def test_no_usable_line_is_a_clear_error(tmp_path, monkeypatch):
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_bytes(b"\n".join(x for x in BROKEN.read_bytes().splitlines() if not _parses(x)))
    with pytest.raises(ValueError, match="no question"):
        evaluate(EvalConfig(model_file=str(BROKEN), adapter="unused", input_file=str(only_bad),
                            output_json=str(tmp_path / "r.json"), per_question=str(tmp_path / "pq.jsonl"),
                            progress=False), reranker=ConstantReranker())
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "pq.jsonl").exists()
    model, adapter = shared_assets()
    monkeypatch.setattr(sys, "argv", ["2_evaluate_ce.py", "--model_file", str(model), "--adapter", str(adapter),
                                      "--input_file", str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit, match="not found"):
        runpy.run_path(str(EVAL_SCRIPT), run_name="__main__")


def test_evaluate_cli_with_a_trained_adapter(tmp_path, monkeypatch, capsys):
    model, adapter = shared_assets()
    lines = sample_lines(2)
    path = tmp_path / "two.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out, pq = tmp_path / "res.json", tmp_path / "pq.jsonl"
    # The training output folder (not final/ itself) is accepted too.
    monkeypatch.setattr(sys, "argv", [
        "2_evaluate_ce.py", "--model_file", str(model), "--adapter", str(adapter.parent), "--input_file", str(path),
        "--max_docs", "12", "--output_json", str(out), "--per_question", str(pq), "--device", "cpu",
        "--no_progress"])
    runpy.run_path(str(EVAL_SCRIPT), run_name="__main__")
    res = orjson.loads(out.read_bytes())
    for system in ("cross_encoder", "bm25"):
        for m in METRICS:
            v = res[system][m]
            assert math.isfinite(v)
            assert 1 <= v <= 12 if m == "mean_gold_rank" else 0 <= v <= 1
        assert set(res[system]["by_gold_position"]) == {"first", "middle", "last"}
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # The evaluator scores in the training format: the same scores as the Python API.
    rr = Reranker.from_pretrained(model, adapter, device="cpu")
    recs = [parse_line(x) for x in lines]
    for rec, row in zip(recs, (orjson.loads(x) for x in pq.read_bytes().splitlines())):
        np.testing.assert_allclose(row["cross_encoder_scores"], rr.score(rec.question, rec.documents[:12]),
                                   atol=2e-5, rtol=1e-5)
    assert "cross-encoder" in capsys.readouterr().out


def test_rerank_cli_round_trip(tmp_path, monkeypatch, capsys):
    model, adapter = shared_assets()
    good = [
        {"id": "q1", "query": "who built the tower", "documents": ["The tower was built by Ola.", "Cats sleep.", ""]},
        {"query": "empty pool", "documents": []},
        {"id": 7, "query": "Question: Document [2]?", "documents": ["Document [2] says", "naïve 東京 🗼", "x" * 300]},
    ]
    bad = [b"", b"{not json", b'["a list"]', b'{"documents": ["a"]}', b'{"query": "q", "documents": "a"}',
           b'{"query": "q", "documents": ["a", 3]}']
    raw = [orjson.dumps(good[0]), *bad[:3], orjson.dumps(good[1]), *bad[3:], orjson.dumps(good[2])]
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\n".join(raw) + b"\n")
    monkeypatch.setattr(sys, "argv", ["3_rerank.py", "--model_file", str(model), "--adapter", str(adapter),
                                      "--input_file", str(path), "--device", "cpu", "--batch_size", "2",
                                      "--no_progress"])
    runpy.run_path(str(RERANK_SCRIPT), run_name="__main__")
    printed = capsys.readouterr().out
    out = [orjson.loads(x) for x in (tmp_path / "q.reranked.jsonl").read_bytes().splitlines()]
    assert [o["line_number"] for o in out] == [0, 4, 8]
    assert [o.get("id") for o in out] == ["q1", None, 7]
    rr = Reranker.from_pretrained(model, adapter, device="cpu")
    for o, g in zip(out, good):
        assert o["query"] == g["query"]
        np.testing.assert_allclose(o["scores"], rr.score(g["query"], g["documents"]), atol=2e-5, rtol=1e-5)
        assert o["ranking"] == sorted(range(len(o["scores"])), key=lambda i: (-o["scores"][i], i))
    for reason in ("empty_line", "invalid_json", "not_a_json_object", "missing_query", "missing_documents",
                   "document_not_a_string"):
        assert f"{reason} 1" in printed
    summary = rerank(RerankConfig(model_file=str(model), adapter=str(adapter), input_file=str(path),
                                  output_file=str(tmp_path / "o.jsonl"), progress=False), reranker=rr)
    assert summary["queries"] == 3 and summary["documents"] == 6 and sum(summary["skipped"].values()) == 6
