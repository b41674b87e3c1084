"""End-to-end trainer runs on a tiny random RWKV-5 and a toy padded dataset."""
import os
import signal
import subprocess
import sys
import textwrap

import orjson
import pytest
import torch
from safetensors.torch import load_file

from cross_encoder.losses import LOSSES
from cross_encoder.scorer import load_cross_encoder
from cross_encoder.train_config import TrainConfig
from cross_encoder.trainer import lr_lambda, main
from trainer_helpers import REPO, tiny_model, toy_dataset

SCRIPT = REPO / "cross_encoder" / "1_peft_training_ce.py"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    return tiny_model(d / "m.pth"), toy_dataset(d / "ds", n_groups=24, max_length=40)


def config(assets, out, **kw):
    base = dict(model_file=str(assets[0]), ds_dir=str(assets[1]), output_dir=str(out), ctx_len=64, bs=6,
                lr=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.1, eval_fraction=0.25, eval_every=0,
                log_every=1, save_every=0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def assert_same_adapter(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def metrics(out):
    return [orjson.loads(line) for line in (out / "metrics.jsonl").read_bytes().splitlines()]


def test_lr_schedule_warmup_then_cosine():
    f = lr_lambda(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [round(f(s), 6) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1)


def test_loss_goes_down_and_outputs_are_complete(assets, tmp_path):
    out = tmp_path / "out"
    summary = main(config(assets, out, epochs=4, lr=1e-2, eval_at_start=True, eval_every=5))
    rows = metrics(out)
    start, end = rows[0], rows[-1]
    assert start["step"] == 0 and start["loss"] is None
    assert end["eval_loss"] < 0.5 * start["eval_loss"]
    assert end["eval_pairwise_accuracy"] >= 0.9 and end["eval_roc_auc"] >= 0.9
    train = [r["loss"] for r in rows if r["loss"] is not None]
    assert sum(train[-4:]) < sum(train[:4])
    assert all({"step", "loss", "lr", "tokens_real", "tokens_processed"} <= r.keys() for r in rows[1:])
    assert [r["step"] for r in rows[1:]] == list(range(1, summary["step"] + 1))
    # The schedule is actually applied: warm at the start, decayed to ~0 at the end.
    assert rows[1]["lr"] < 1e-2 and end["lr"] < 1e-4
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = orjson.loads((out / "config.json").read_bytes())
    assert cfg["lr"] == 1e-2 and cfg["resolved"]["eval_groups"] == 6
    ce = orjson.loads((out / "final" / "cross_encoder_config.json").read_bytes())
    assert (ce["sep_token_id"], ce["cls_token_id"], ce["pad_token_id"], ce["max_length"]) == (2, 1, 0, 40)
    assert ce["lora"]["r"] == 4 and ce["loss"] == "bce" and ce["step"] == summary["step"]
    # Only adapter weights are saved: LoRA matrices and the score head, never the trunk.
    keys = adapter(out / "final").keys()
    assert any("score" in k for k in keys)
    assert all("lora_" in k or ".score." in k for k in keys)


def test_kill_and_resume_reaches_uninterrupted_weights(assets, tmp_path):
    common = dict(max_steps=8, save_every=3, save_total_limit=1, grad_accum=2)
    ref = tmp_path / "ref"
    main(config(assets, ref, **common))
    out = tmp_path / "killed"
    cfg = config(assets, out, lora_ckpt=str(out), **common)
    # A real SIGKILL at a fixed point (after step 5, whose metrics row is already written).
    code = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO / 'tests')!r})
        torch.set_num_threads(1)
        from cross_encoder.train_config import TrainConfig
        from cross_encoder.trainer import main
        def kill(step):
            if step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        main(TrainConfig(**{cfg.to_dict()!r}), on_step=kill)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "final").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-3"]
    assert max(r["step"] for r in metrics(out)) == 5
    summary = main(cfg)
    assert summary["steps_run"] == 5
    assert_same_adapter(adapter(ref / "final"), adapter(out / "final"))
    # The metrics log continues without duplicated steps and agrees with the uninterrupted run.
    got, want = metrics(out), metrics(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 9))
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == pytest.approx(b["lr"])


def test_cli_with_fresh_lora_ckpt_dir_starts_fresh(assets, tmp_path):
    out = tmp_path / "out"
    ref = tmp_path / "ref"
    main(config(assets, ref, max_steps=3))
    args = [sys.executable, str(SCRIPT), "--model_file", str(assets[0]), "--ds_dir", str(assets[1]),
            "--output_dir", str(out), "--lora_ckpt", str(out), "--ctx_len", "64", "--bs", "6", "--lr", "5e-3",
            "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.1", "--eval_fraction", "0.25",
            "--eval_every", "0", "--log_every", "1", "--save_every", "0", "--seed", "0", "--max_steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "does not exist; starting fresh" in proc.stdout
    assert_same_adapter(adapter(ref / "final"), adapter(out / "final"))


def test_empty_lora_ckpt_dir_and_finished_run(assets, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    main(config(assets, out, max_steps=5, save_every=1, save_total_limit=2, lora_ckpt=str(empty)))
    assert "holds no checkpoint" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-4", "checkpoint-5", "config.json", "final", "loss.png", "metrics.jsonl"]
    for name in ("checkpoint-4", "final"):  # every kept folder is usable on its own
        model, cfg = load_cross_encoder(assets[0], out / name)
        assert cfg["step"] == (4 if name == "checkpoint-4" else 5)
    before = adapter(out / "final")
    summary = main(config(assets, out, max_steps=5, lora_ckpt=str(out)))
    assert summary["steps_run"] == 0
    assert_same_adapter(before, adapter(out / "final"), atol=0)
    # Starting over into a folder with checkpoints, without --lora_ckpt, is refused.
    with pytest.raises(FileExistsError, match="--lora_ckpt"):
        main(config(assets, out, max_steps=5))


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains(assets, tmp_path, loss):
    out = tmp_path / loss
    summary = main(config(assets, out, max_steps=3, loss=loss, group_by_length=loss == "grouped"))
    rows = metrics(out)
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in rows)
    assert summary["eval_loss"] == summary["eval_loss"]
    assert orjson.loads((out / "final" / "cross_encoder_config.json").read_bytes())["loss"] == loss


def test_errors_say_what_to_do(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="model file"):
        main(config(assets, tmp_path / "a", model_file=str(tmp_path / "nope.pth")))
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="padding.json"):
        main(config(assets, tmp_path / "b", ds_dir=str(tmp_path / "bare")))
    with pytest.raises(ValueError, match="--ctx_len"):
        main(config(assets, tmp_path / "c", ctx_len=10))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cpu"):
            main(config(assets, tmp_path / "d", device="cuda"))
