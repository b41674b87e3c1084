"""The one-command demo, end to end in its reduced (--quick) size, plus its sample split."""
import math
import os
import subprocess
import sys

import orjson
import pytest
from eval_helpers import REPO, SAMPLE

from cross_encoder.demo import SIZES, DemoConfig, DemoError, clear_training_output, main, split_sample
from long_ctx.common.line_reader import iter_lines


def test_split_is_disjoint_seeded_and_keeps_lines(tmp_path):
    sample = [line for _, line in iter_lines(SAMPLE)]
    full = SIZES["full"]
    a = split_sample(SAMPLE, tmp_path / "t0", tmp_path / "h0", full, seed=0)
    b = split_sample(SAMPLE, tmp_path / "t1", tmp_path / "h1", full, seed=0)
    c = split_sample(SAMPLE, tmp_path / "t2", tmp_path / "h2", full, seed=1)
    train, held = (tmp_path / "t0").read_bytes().splitlines(), (tmp_path / "h0").read_bytes().splitlines()
    assert a == (len(train), len(held)) and len(train) + len(held) == len(sample)
    assert len(held) == round(len(sample) * full.held_out_fraction)
    assert sorted(train + held) == sorted(sample)
    # Input order is kept inside each part.
    pos = {line: i for i, line in enumerate(sample)}
    assert [pos[x] for x in train] == sorted(pos[x] for x in train)
    assert a == b and (tmp_path / "h1").read_bytes() == (tmp_path / "h0").read_bytes()
    assert (tmp_path / "h2").read_bytes() != (tmp_path / "h0").read_bytes()
    assert c[0] + c[1] == len(sample)


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    # One BLAS thread: the suite may share the cores with other work; results do not depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "demo.py", "--quick", "--out", str(out), "--seed", "3"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = orjson.loads((out / "demo_summary.json").read_bytes())
    commands = " ".join(s["command"] for s in summary["steps"])
    for script in ("long_ctx/0_create_q_p_n.py", "long_ctx/1_create_datasets.py", "long_ctx/2_create_padded_data.py",
                   "write_random_checkpoint", "cross_encoder/1_peft_training_ce.py", "cross_encoder/2_evaluate_ce.py"):
        assert script in commands
    for path in summary["plots"].values():
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", path
    assert (out / "train" / "final" / "adapter_model.safetensors").is_file()
    # The evaluation used best/ (--adapter OUT/train), and the demo said which step it is.
    best = orjson.loads((out / "train" / "best" / "cross_encoder_config.json").read_bytes())
    assert summary["best"] == best["best"] and best["best"]["metric"] == "eval_group_top1"
    assert f"uses {out.relative_to(REPO) if out.is_relative_to(REPO) else out}/train/best: step {best['step']}" \
        in proc.stdout
    padding = orjson.loads((out / "stage2" / "padding.json").read_bytes())
    assert padding["max_length"] == summary["max_length"] and padding["truncated_rows"] == 0
    # The trainer's opening line names the metric it resolved (the default, not the unset flag).
    assert "best checkpoint: eval_group_top1 (higher is better)" in proc.stdout
    results = orjson.loads((out / "eval" / "results.json").read_bytes())
    assert results["model"]["step"] == best["step"]
    assert results["num_questions"] == summary["held_out_lines"] - sum(results["skipped"].values()) > 0
    largest_pool = results["pool_size"]["max"]
    for system in ("cross_encoder", "bm25"):
        for name in ("mrr@10", "ndcg@10", "recall@1", "recall@5", "recall@10", "mean_gold_rank"):
            v = results[system][name]
            assert math.isfinite(v), (system, name)
            assert (1 <= v <= largest_pool) if name == "mean_gold_rank" else (0 <= v <= 1), (system, name, v)
        assert results[system]["recall@1"] <= results[system]["recall@5"] <= results[system]["recall@10"]
    assert "SMOKE RUN" in proc.stdout and str(out / "eval" / "results.png") in proc.stdout
    # The long-context leg: window rows through every stage, a window evaluation at the end.
    assert commands.count("--mode window") == 2
    window = summary["window"]
    rows = [orjson.loads(x) for x in (out / "window" / "stage0" / "win.jsonl").read_bytes().splitlines()]
    assert rows and all(r["mode"] == "window" and r["positive_tokens"] <= window["context_tokens"] for r in rows)
    assert orjson.loads((out / "window" / "stage2" / "padding.json").read_bytes())["truncated_rows"] == 0
    wres = orjson.loads((out / "window" / "eval" / "results.json").read_bytes())
    assert wres["mode"] == "window" and wres["num_questions"] > 0 and wres["windows_cut"] == 0
    for system in ("cross_encoder", "bm25"):
        assert 0 < wres[system]["mrr"] <= 1 and window["metrics"][system]["mrr"] == wres[system]["mrr"]


def test_missing_sample_is_a_clear_error(tmp_path):
    with pytest.raises(DemoError, match="not found"):
        main(DemoConfig(out=str(tmp_path / "o"), quick=True, sample=str(tmp_path / "nope.jsonl.zst")))


def test_a_rerun_replaces_only_training_output(tmp_path):
    ds = tmp_path / "stage2"
    ds.mkdir()
    old = tmp_path / "train"
    (old / "final").mkdir(parents=True)
    (old / "checkpoint-5").mkdir()
    (old / "best").mkdir()
    (old / "config.json").write_text(orjson.dumps({"model_file": "m.pth", "ds_dir": str(ds), "output_dir": str(old),
                                                   "lora_ckpt": None, "resolved": {}}).decode())
    (old / "metrics.jsonl").write_text('{"step": 5, "lr": 0.1, "loss": 0.5}\n')
    (old / "notes.txt").write_text("mine")
    clear_training_output(old, ds)
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt"]  # the user's file stays
    clear_training_output(old, ds)  # nothing of the trainer's there: nothing to do
    other = tmp_path / "mine"
    other.mkdir()
    (other / "metrics.jsonl").write_text("my own numbers\n")
    with pytest.raises(DemoError, match="not written by this trainer"):
        clear_training_output(other, ds)
    assert (other / "metrics.jsonl").read_text() == "my own numbers\n"
