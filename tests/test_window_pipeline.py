"""Window rows end to end: stage 0 --mode window -> 1 -> 2 -> trainer -> evaluator --mode window
with a tiny random RWKV-5 at T = 1024, and the window evaluator against independent oracles
(rank_bm25 over the same windows, the sample's generator for the records)."""
import re

import numpy as np
import orjson
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from eval_helpers import BROKEN, CLS, PAD, SEP, sample_lines, stub_ce_config
from rank_bm25 import BM25Okapi

from cross_encoder.evaluation.evaluator import EvalConfig
from cross_encoder.evaluation.evaluator import main as evaluate
from long_ctx.stage0.driver import Stage0Config
from long_ctx.stage0.driver import main as stage0
from long_ctx.stage0.modes.window import SEPARATOR
from long_ctx.stage0.synthetic_nq import generate
from long_ctx.stage1 import Stage1Config
from long_ctx.stage1 import main as stage1
from long_ctx.stage2 import Stage2Config
from long_ctx.stage2 import main as stage2

T = 1024
M = 4  # windows per evaluated question


def _tokens(s):
    return [m.lower() for m in re.findall(r"\w+", s)]  # stage 0's `words`, written independently


class ConstantReranker:
    """Every window scores 0: ties go to the lower index, so the gold ranks at its own place."""
    max_length, sep, cls, pad, device, ce_config = T + 64, SEP, CLS, PAD, "cpu", stub_ce_config(T + 64)

    def score_many(self, pools):
        return [[0.0] * len(docs) for _, docs in pools]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from cross_encoder.rwkv5 import write_random_checkpoint
    from cross_encoder.training.config import TrainConfig
    from cross_encoder.training.trainer import main as train

    work = tmp_path_factory.mktemp("window_pipeline")
    lines = sample_lines(30)
    (work / "train.jsonl").write_bytes(b"\n".join(lines[:24]) + b"\n")
    (work / "held.jsonl").write_bytes(b"\n".join(lines[24:]) + b"\n")
    qpn = work / "win.jsonl"
    s0 = stage0(Stage0Config(str(work / "train.jsonl"), str(qpn), mode="window", context_tokens=T,
                             num_negatives=1, num_splits=1, progress=False))
    s1 = stage1(Stage1Config(str(qpn), str(work / "s1"), num_proc=1, progress=False))
    max_length = T + s1["token_lengths"]["question"]["max"] + 64  # negatives may exceed T by tol
    s2 = stage2(Stage2Config(str(work / "s1"), max_length, output_dir=str(work / "s2"), progress=False))
    model = work / "tiny.pth"
    write_random_checkpoint(str(model), n_layer=1, n_embd=32, head_size=16, seed=0)
    summary = train(TrainConfig(model_file=str(model), ds_dir=str(work / "s2"), output_dir=str(work / "train"),
                                ctx_len=max_length, bs=4, max_steps=3, lr=1e-3, lora_r=4, lora_alpha=8,
                                lora_dropout=0.0, loss="grouped", group_by_length=True, eval_fraction=0.0,
                                save_every=0, log_every=1, seed=0, device="cpu"))
    res = evaluate(EvalConfig(model_file=str(model), adapter=str(work / "train" / "final"),
                              input_file=str(work / "held.jsonl"), mode="window", context_tokens=T, num_windows=M,
                              output_json=str(work / "eval.json"), per_question=str(work / "pq.jsonl"),
                              device="cpu", progress=False))
    return dict(work=work, s0=s0, s1=s1, s2=s2, summary=summary, res=res, max_length=max_length)


def test_stages_train_and_evaluate_on_window_rows(pipeline):
    work, s0 = pipeline["work"], pipeline["s0"]
    rows0 = [orjson.loads(x) for x in (work / "win.jsonl").read_bytes().splitlines()]
    assert s0["records_written"] == len(rows0) >= 15
    # Stage 1 keeps the window fields, and its token ids are stage 0's counts.
    t = pq.read_table(work / "s1" / "train-00000-of-00001.parquet")
    assert t["positive_doc_ids"].to_pylist() == [r["positive_doc_ids"] for r in rows0]
    assert t["negative_doc_ids"].to_pylist() == [r["negative_doc_ids"] for r in rows0]
    assert t["gold_position"].to_pylist() == [r["gold_position"] for r in rows0]
    assert pc.list_value_length(t["positive"]).to_pylist() == [r["positive_tokens"] for r in rows0]
    assert t["context_tokens"].to_pylist() == [T] * len(rows0)
    # Stage 2: one positive + one negative row per record, none truncated, CLS at length - 1.
    s2 = pq.read_table(work / "s2" / "train-00000-of-00001.parquet")
    assert s2.num_rows == 2 * len(rows0) and pipeline["s2"]["truncated_rows"] == 0
    q_len = pc.list_value_length(t["question"]).to_numpy()
    lengths = s2["length"].to_numpy()
    expected = np.stack([q_len + [r["positive_tokens"] for r in rows0] + 2,
                         q_len + [r["negative_tokens"][0] for r in rows0] + 2], 1).ravel()
    assert lengths.tolist() == expected.tolist()
    ids = np.array(s2["input_ids"].to_pylist())
    assert (ids[np.arange(len(ids)), lengths - 1] == CLS).all()
    # The trainer trained on them with little padding (group_by_length + trimming).
    summary = pipeline["summary"]
    assert (work / "train" / "final" / "adapter_model.safetensors").is_file()
    assert summary["tokens_processed"] / summary["tokens_real"] <= 1.1
    # The evaluator wrote its outputs.
    res = pipeline["res"]
    assert res["mode"] == "window" and res["num_questions"] >= 1
    assert (work / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert orjson.loads((work / "eval.json").read_bytes())["cross_encoder"]["mrr"] == res["cross_encoder"]["mrr"]


def test_window_evaluation_bm25_equals_rank_bm25(pipeline):
    truth = {i: s.record for i, s in enumerate(generate(30))}
    rows = [orjson.loads(x) for x in (pipeline["work"] / "pq.jsonl").read_bytes().splitlines()]
    assert rows and all(2 <= r["num_windows"] <= M for r in rows)
    for r in rows:
        rec = truth[24 + r["line_number"]]  # held.jsonl holds sample lines 24..29
        texts = [SEPARATOR.join(rec.documents[i - 1] for i in ids) for ids in r["window_doc_ids"]]
        assert sum(rec.documents[rec.gold_id - 1] in x for x in texts) == 1
        assert rec.gold_id in r["window_doc_ids"][r["gold_window"]]
        scores = BM25Okapi([_tokens(x) for x in texts]).get_scores(_tokens(rec.question))
        assert r["bm25_scores"] == scores.tolist()  # bit-identical (stage 0's BM25 promise)
        g = scores[r["gold_window"]]
        assert r["gold_rank"]["bm25"] == 1 + int(np.sum(scores > g)) + int(np.sum(scores[:r["gold_window"]] == g))
        ce = np.array(r["cross_encoder_scores"])
        assert np.isfinite(ce).all()
        gc = ce[r["gold_window"]]
        assert r["gold_rank"]["cross_encoder"] == 1 + int(np.sum(ce > gc)) + int(np.sum(ce[:r["gold_window"]] == gc))
    res = pipeline["res"]
    for s in ("bm25", "cross_encoder"):
        ranks = [r["gold_rank"][s] for r in rows]
        assert res[s]["mrr"] == pytest.approx(np.mean([1 / x for x in ranks]))
        assert res[s]["recall@1"] == pytest.approx(np.mean([x == 1 for x in ranks]))
        assert res[s]["mean_gold_rank"] == pytest.approx(np.mean(ranks))


def test_same_windows_as_stage0_skips_and_ties(tmp_path):
    """The evaluator's windows are stage 0's (same construction, strategy and seed); skipped lines are
    counted by reason; with equal scores the gold ranks where the seeded order put it."""
    lines = sample_lines(40)
    broken = BROKEN.read_bytes().splitlines()
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines[:5] + broken + lines[5:]) + b"\n")
    s0 = tmp_path / "s0.jsonl"
    stats = stage0(Stage0Config(str(path), str(s0), mode="window", context_tokens=T, num_negatives=M - 1,
                                negative_strategy="random", seed=5, num_splits=1, progress=False))
    pq_path = tmp_path / "pq.jsonl"
    res = evaluate(EvalConfig(model_file=str(BROKEN), adapter="unused", input_file=str(path), mode="window",
                              context_tokens=T, num_windows=M, negative_strategy="random", seed=5,
                              output_json=str(tmp_path / "r.json"), per_question=str(pq_path), progress=False),
                   reranker=ConstantReranker())
    # Every parser reason of the broken file, and the window reasons, counted as stage 0 counts them.
    assert res["skipped"] == stats["skipped_by_reason"] and len(res["skipped"]) >= 12
    assert res["lines_read"] == len(lines) + len(broken)
    rows = [orjson.loads(x) for x in pq_path.read_bytes().splitlines()]
    by_line = {r["line_number"]: r for r in (orjson.loads(x) for x in s0.read_bytes().splitlines())}
    assert [r["line_number"] for r in rows] == sorted(by_line)
    for r in rows:
        w = by_line[r["line_number"]]
        assert sorted(r["window_doc_ids"]) == sorted([w["positive_doc_ids"], *w["negative_doc_ids"]])
        assert r["window_doc_ids"][r["gold_window"]] == w["positive_doc_ids"]
        assert r["gold_position"] == w["gold_position"]
        assert r["gold_rank"]["cross_encoder"] == r["gold_window"] + 1  # ties: the lower index
    # The seeded order puts the gold window at different places.
    assert len({r["gold_window"] for r in rows}) >= 3
    thirds = res["cross_encoder"]["by_needle_position"]
    assert sum(v["n"] for v in thirds.values()) == res["num_questions"] == len(rows)
    for t, lo, hi in (("first", 0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("last", 2 / 3, 1)):
        assert thirds[t]["n"] == sum(lo <= r["gold_position"] < hi for r in rows)


@pytest.mark.parametrize("bad", [dict(num_windows=1), dict(context_tokens=0), dict(context_tolerance=1.5)])
def test_window_flags_are_checked(tmp_path, bad):
    with pytest.raises(ValueError):
        evaluate(EvalConfig(model_file=str(BROKEN), adapter="unused", input_file=str(BROKEN), mode="window",
                            output_json=str(tmp_path / "r.json"), progress=False, **bad),
                 reranker=ConstantReranker())
