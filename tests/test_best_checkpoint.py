"""best/ by --metric_for_best_model, early stopping (and its resume), the raw-pool metrics logged
during training against 2_evaluate_ce.py, and what `--adapter OUT` resolves to.

The oracles: metrics.jsonl's own eval values (the best step and the stopping step are recomputed
here from them with the documented rule), the checkpoint-<step>/ folder of the best step (its
weights), an uninterrupted run (for the resumed one) and the evaluator run on a saved checkpoint.
"""
import math
import shutil

import orjson
import pytest
import yaml
from eval_helpers import SAMPLE, shared_assets, tiny_checkpoint, toy_padded_dataset
from trainer_helpers import adapter_weights, assert_same_adapter, read_metrics_rows, tiny_model, toy_config, toy_dataset

from cross_encoder.evaluation.evaluator import EvalConfig
from cross_encoder.evaluation.evaluator import main as evaluate
from cross_encoder.evaluation.raw_pools import RawPoolEval
from cross_encoder.modeling import load_cross_encoder, resolve_adapter_dir
from cross_encoder.training.trainer import main as train
from long_ctx.common.cli import UsageError


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("best")
    return tiny_model(d / "m.pth"), toy_dataset(d / "ds", n_groups=24, max_length=40)


def evals(out, metric):
    return [(r["step"], r[metric]) for r in read_metrics_rows(out) if metric in r]


def running_best(values, greater, threshold=0.0):
    """Per evaluation (step, value): (best step, best value, evaluations without improvement) by
    the documented rule (better: strictly; an improvement: better by more than the threshold)."""
    best, best_step, bad, out = None, None, 0, []
    for step, v in values:
        better = best is None or (v > best if greater else v < best)
        gain = math.inf if best is None else (v - best if greater else best - v)
        bad = 0 if better and gain > threshold else bad + 1
        if better:
            best, best_step = v, step
        out.append((best_step, best, bad))
    return out


def expected_stop(values, greater, patience, threshold=0.0):
    """(best step, stopping step or None) from the logged values."""
    for (step, _), (best_step, _, bad) in zip(values, running_best(values, greater, threshold)):
        if patience is not None and bad >= patience:
            return best_step, step
    return best_step, None


def test_best_checkpoint_is_the_best_evaluation_and_adapter_out_resolves_best_final_newest(assets, tmp_path, capsys):
    # The toy task's eval loss falls as it learns, so "greater is better" makes it peak early.
    out = tmp_path / "out"
    summary = train(toy_config(assets, out, max_steps=6, eval_every=2, save_every=2, save_total_limit=0,
                               metric_for_best_model="eval_loss", greater_is_better=True))
    values = evals(out, "eval_loss")
    assert [s for s, _ in values] == [2, 4, 6]
    want_step, _ = expected_stop(values, greater=True, patience=None)
    assert want_step < 6 and summary["best"]["step"] == want_step  # the metric did peak early
    best_value = dict(values)[want_step]
    assert_same_adapter(adapter_weights(out / "best"), adapter_weights(out / f"checkpoint-{want_step}"), atol=0)
    with pytest.raises(AssertionError):
        assert_same_adapter(adapter_weights(out / "best"), adapter_weights(out / "final"))
    ce = orjson.loads((out / "best" / "cross_encoder_config.json").read_bytes())
    assert ce["step"] == want_step and ce["best"] == {"metric": "eval_loss", "greater_is_better": True,
                                                      "value": best_value, "step": want_step}
    card = yaml.safe_load((out / "best" / "README.md").read_text().split("---")[1])
    got = {m["type"]: m["value"] for m in card["model-index"][0]["results"][0]["metrics"]}
    assert got["eval_loss"] == best_value
    rows = [r for r in read_metrics_rows(out) if "eval_loss" in r]
    assert [(r["best_step"], r["best_metric"], r["evals_without_improvement"]) for r in rows] == \
        running_best(values, greater=True)
    assert orjson.loads((out / "config.json").read_bytes())["outcome"]["best"]["step"] == want_step

    # --adapter OUT: best/, else final/, else the newest checkpoint-<step>/; a damaged one is skipped.
    assert resolve_adapter_dir(out) == out / "best"
    (out / "best" / "adapter_model.safetensors").write_bytes(b"x")
    assert resolve_adapter_dir(out) == out / "final"
    assert "skipping damaged" in capsys.readouterr().err
    shutil.rmtree(out / "best")
    assert resolve_adapter_dir(out) == out / "final"
    shutil.rmtree(out / "final")
    assert resolve_adapter_dir(out) == out / "checkpoint-6"
    # A resume never continues from best/ (an earlier step): it takes the newest checkpoint.
    shutil.copytree(out / "checkpoint-2", out / "best")
    from cross_encoder.modeling.adapter_dirs import find_adapter
    assert find_adapter(out, need_state=True).path == out / "checkpoint-6"


def test_unknown_metric_and_early_stopping_without_evaluation_are_one_line_errors(assets, tmp_path):
    with pytest.raises(UsageError, match=r"eval_mrr@10 is not a metric this run logs; it logs: eval_loss, "
                                         r"eval_accuracy, eval_roc_auc, eval_pairwise_accuracy, eval_group_top1$"):
        train(toy_config(assets, tmp_path / "a", max_steps=1, metric_for_best_model="eval_mrr@10"))
    with pytest.raises(UsageError, match="needs an evaluation"):
        train(toy_config(assets, tmp_path / "b", max_steps=1, eval_fraction=0.0, early_stopping_patience=1))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work
    # Raw text needs the World vocabulary; the toy model has 64 ids.
    with pytest.raises(ValueError, match="--eval_input_file has RWKV World token id .* vocabulary is 64"):
        train(toy_config(assets, tmp_path / "c", max_steps=1, eval_input_file=str(SAMPLE), eval_pool_limit=1),
              pool_eval=RawPoolEval)


class Interrupt(Exception):
    pass


def test_early_stopping_stops_at_the_right_evaluation_and_a_resume_keeps_the_count(assets, tmp_path):
    common = dict(max_steps=10, eval_every=1, save_every=1, save_total_limit=2, metric_for_best_model="eval_loss",
                  greater_is_better=True, early_stopping_patience=3)
    ref = tmp_path / "ref"
    summary = train(toy_config(assets, ref, **common))
    values = evals(ref, "eval_loss")
    best_step, stop_step = expected_stop(values, greater=True, patience=3)
    assert stop_step is not None and stop_step < 10
    assert summary["step"] == stop_step and values[-1][0] == stop_step and summary["best"]["step"] == best_step
    last = read_metrics_rows(ref)[-1]
    assert last["step"] == stop_step and "did not improve for 3 evaluations" in last["early_stop"]
    assert orjson.loads((ref / "config.json").read_bytes())["outcome"]["stopped_early"] == last["early_stop"]
    assert (ref / "final").is_dir() and orjson.loads((ref / "final" / "cross_encoder_config.json").read_bytes())[
        "step"] == stop_step

    # Interrupted one step before the stop (its checkpoint holds a count of patience - 1), then resumed:
    # without the restored count and best value it would train on.
    out = tmp_path / "out"
    cfg = toy_config(assets, out, lora_ckpt=str(out), **common)

    def interrupt(step):
        if step == stop_step - 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, on_step=interrupt)
    assert not (out / "final").exists()
    resumed = train(cfg)
    assert resumed["steps_run"] == 1 and resumed["step"] == stop_step
    keys = ("step", "loss", "eval_loss", "best_step", "best_metric", "evals_without_improvement", "early_stop")
    assert [[r.get(k) for k in keys] for r in read_metrics_rows(out)] == \
        [[r.get(k) for k in keys] for r in read_metrics_rows(ref)]
    assert_same_adapter(adapter_weights(out / "best"), adapter_weights(ref / "best"))
    assert_same_adapter(adapter_weights(out / "final"), adapter_weights(ref / "final"))
    # Resumed again after the stop: nothing left to do.
    assert train(cfg)["steps_run"] == 0


def test_raw_pool_metrics_equal_the_evaluator_on_the_saved_checkpoints(tmp_path):
    model = tiny_checkpoint(tmp_path / "tiny.pth")
    ds = toy_padded_dataset(tmp_path / "ds", max_length=48, n_groups=8)
    out = tmp_path / "out"
    limit = 4
    train(toy_config((model, ds), out, ctx_len=48, bs=4, max_steps=2, lr=0.05, eval_fraction=0.0, eval_every=1,
                     save_every=1, save_total_limit=0, lora_dropout=0.0, eval_input_file=str(SAMPLE),
                     eval_pool_limit=limit, metric_for_best_model="eval_mrr@10", device="cpu"),
          pool_eval=RawPoolEval)
    rows = [r for r in read_metrics_rows(out) if "eval_mrr@10" in r]
    assert [r["step"] for r in rows] == [1, 2]
    names = ("mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10", "mean_gold_rank")
    for r in rows:
        res = evaluate(EvalConfig(model_file=str(model), adapter=str(out / f"checkpoint-{r['step']}"),
                                  input_file=str(SAMPLE), limit=limit, output_json=str(tmp_path / "e.json"),
                                  progress=False))
        assert r["eval_pools"] == res["num_questions"] == limit
        for name in names:
            assert r[f"eval_{name}"] == pytest.approx(res["cross_encoder"][name], abs=1e-12), name
            assert r[f"eval_bm25_{name}"] == pytest.approx(res["bm25"][name], abs=1e-12), name
    # The two steps rank differently (so the comparison tells the weights apart).
    assert rows[0]["eval_mean_gold_rank"] != rows[1]["eval_mean_gold_rank"]
    best_step, _ = expected_stop([(r["step"], r["eval_mrr@10"]) for r in rows], greater=True, patience=None)
    assert orjson.loads((out / "best" / "cross_encoder_config.json").read_bytes())["step"] == best_step
    # --adapter OUT in the evaluator is best/.
    res = evaluate(EvalConfig(model_file=str(model), adapter=str(out), input_file=str(SAMPLE), limit=limit,
                              output_json=str(tmp_path / "e2.json"), progress=False))
    assert res["model"]["step"] == best_step


def test_raw_pools_split_over_two_processes_give_the_one_process_metrics():
    """Under DDP each process ranks every second question batch and the ranks are gathered: the
    same numbers as one process (here both processes' shares in one, the gather simulated)."""
    model_file, adapter = shared_assets()
    model, ce_config = load_cross_encoder(model_file, adapter, merge=False)
    one = RawPoolEval(SAMPLE, 20, ce_config).evaluate(model, lambda mine: [mine])
    shares = []
    RawPoolEval(SAMPLE, 20, ce_config, rank=1, world_size=2).evaluate(model, lambda mine: shares.append(mine) or [mine])
    two = RawPoolEval(SAMPLE, 20, ce_config, rank=0, world_size=2).evaluate(model, lambda mine: [mine, shares[0]])
    assert 0 < len(shares[0]) < one["eval_pools"] == 20
    assert two == one


def test_stop_reason_names_the_best_value_and_survives_only_nan_evaluations():
    from cross_encoder.training.best import BestTracker

    t = BestTracker("eval_loss", greater_is_better=False, patience=2)
    for step, v in ((1, 0.5), (2, 0.25), (3, 0.3), (4, 0.25)):  # 0.25 again is no improvement
        t.update(step, {"eval_loss": v})
    assert (t.value, t.step, t.evals_without_improvement) == (0.25, 2, 2)
    assert t.stop_reason.endswith("best 0.25 at step 2")
    nan = BestTracker("eval_loss", greater_is_better=False, patience=2)
    for step in (1, 2):
        nan.update(step, {"eval_loss": float("nan")})
    assert nan.value is None and "did not improve for 2 evaluations" in nan.stop_reason


def test_best_left_by_an_abandoned_continuation_or_an_earlier_run_never_wins_adapter_out(assets, tmp_path):
    """best/ written after the step a run resumes from, for an evaluation the resumed run does not
    repeat (another --eval_every), is rebuilt from checkpoint-<best step> or removed; a best/ of an
    earlier run in a folder a fresh run starts in is removed. --adapter OUT then means this run."""
    def ce(p):
        return orjson.loads((p / "cross_encoder_config.json").read_bytes())

    common = dict(max_steps=8, lr=2e-2, save_every=2, save_total_limit=0, metric_for_best_model="eval_loss",
                  greater_is_better=True)  # eval_loss rises on the toy task: the best moves to later steps
    out = tmp_path / "a"

    def interrupt(step):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(toy_config(assets, out, lora_ckpt=str(out), eval_every=1, **common), on_step=interrupt)
    assert ce(out / "best")["step"] == 3  # written after checkpoint-2, the step a resume continues
    s = train(toy_config(assets, out, lora_ckpt=str(out), eval_every=4, **common))
    rows = [r for r in read_metrics_rows(out) if "eval_loss" in r]
    best_step = max(rows, key=lambda r: (r["eval_loss"], -r["step"]))["step"]  # the first of the highest
    assert s["best"]["step"] == best_step
    if (out / f"checkpoint-{best_step}").is_dir():
        assert ce(out / "best")["step"] == ce(out / "best")["best"]["step"] == best_step
        assert_same_adapter(adapter_weights(out / "best"), adapter_weights(out / f"checkpoint-{best_step}"))
    else:
        assert not (out / "best").exists() and resolve_adapter_dir(out) == out / "final"

    fresh = tmp_path / "b"
    with pytest.raises(Interrupt):
        train(toy_config(assets, fresh, lora_ckpt=str(fresh), max_steps=4, eval_every=1), on_step=interrupt)
    assert sorted(p.name for p in fresh.iterdir() if p.is_dir()) == ["best"]  # no checkpoint to resume
    train(toy_config(assets, fresh, lora_ckpt=str(fresh), max_steps=4, eval_fraction=0.0))
    assert not (fresh / "best").exists() and resolve_adapter_dir(fresh) == fresh / "final"
