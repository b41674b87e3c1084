"""End-to-end trainer runs on a tiny random RWKV-5 and a toy padded dataset."""
import signal
import subprocess
import sys

import orjson
import pytest
import torch
from trainer_helpers import (adapter_weights, assert_same_adapter, cli_args, hooked_trainer, read_metrics_rows,
                             tiny_model, toy_config, toy_dataset)

from cross_encoder.modeling import load_cross_encoder
from cross_encoder.training.config import TrainConfig
from cross_encoder.training.losses import LOSSES_FOR
from cross_encoder.training.trainer import lr_lambda, main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    return tiny_model(d / "m.pth"), toy_dataset(d / "ds", n_groups=24, max_length=40)


config = toy_config
adapter = adapter_weights
metrics = read_metrics_rows


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


def test_cli_fresh_lora_ckpt_then_kill_and_resume_reaches_uninterrupted_weights(assets, tmp_path):
    """The seed README's pattern (--lora_ckpt = the output folder, which does not exist yet) via the
    CLI, killed with SIGKILL after step 5, then resumed: same weights as an uninterrupted run."""
    common = dict(max_steps=8, save_every=3, save_total_limit=1, grad_accum=2)
    ref = tmp_path / "ref"
    main(config(assets, ref, **common))
    out = tmp_path / "killed"
    cfg = config(assets, out, lora_ckpt=str(out), **common)
    # The CLI's own parsing, with main() wrapped to SIGKILL the process after step 5 (whose
    # metrics row is already written): a real crash at a fixed point.
    script = hooked_trainer(tmp_path / "kill.py", "    if step == 5:\n        os.kill(os.getpid(), signal.SIGKILL)")
    popen = subprocess.Popen([sys.executable, "-u", str(script), *cli_args(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    stdout, stderr = popen.communicate()
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "does not exist; starting fresh" in proc.stdout
    # Progress to a pipe is plain lines, not a tqdm bar's carriage-return updates (issue 9, #19).
    assert "\r" not in proc.stderr and len(proc.stderr.splitlines()) <= 4, proc.stderr[-2000:]
    assert not (out / "final").exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["checkpoint-3", "config.json", "metrics.jsonl"]
    assert max(r["step"] for r in metrics(out)) == 5
    # What a kill during a checkpoint write leaves (atomic_dir's temp, tagged with the dead pid).
    stale = out / f".checkpoint-6.{popen.pid}.x1y2.tmp"
    stale.mkdir()
    summary = main(cfg)
    assert summary["steps_run"] == 5
    assert not stale.exists()
    assert_same_adapter(adapter(ref / "final"), adapter(out / "final"))
    # The metrics log continues without duplicated steps and agrees with the uninterrupted run.
    got, want = metrics(out), metrics(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, 9))
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == pytest.approx(b["lr"])


def test_empty_lora_ckpt_dir_and_finished_run(assets, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    main(config(assets, out, max_steps=5, save_every=1, save_total_limit=2, lora_ckpt=str(empty)))
    assert "holds no checkpoint" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best", "checkpoint-4", "checkpoint-5", "config.json", "final", "loss.png", "metrics.jsonl"]
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


def test_workers_and_grad_checkpointing_do_not_change_results(assets, tmp_path):
    main(config(assets, tmp_path / "plain", max_steps=3))
    main(config(assets, tmp_path / "other", max_steps=3, num_workers=2, grad_cp=True))
    assert_same_adapter(adapter(tmp_path / "plain" / "final"), adapter(tmp_path / "other" / "final"), atol=1e-5)


@pytest.mark.parametrize("loss", LOSSES_FOR["passage"])
def test_each_loss_trains(assets, tmp_path, loss):
    out = tmp_path / loss
    summary = main(config(assets, out, max_steps=3, loss=loss, group_by_length=loss == "grouped"))
    rows = metrics(out)
    assert all(r["loss"] is not None and r["loss"] == r["loss"] for r in rows)
    assert summary["eval_loss"] == summary["eval_loss"]
    assert orjson.loads((out / "final" / "cross_encoder_config.json").read_bytes())["loss"] == loss


def test_errors_say_what_to_do(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match="--model_file .* not found"):
        main(config(assets, tmp_path / "a", model_file=str(tmp_path / "nope.pth")))
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match="padding.json"):
        main(config(assets, tmp_path / "b", ds_dir=str(tmp_path / "bare")))
    with pytest.raises(ValueError, match="--ctx_len"):
        main(config(assets, tmp_path / "c", ctx_len=10))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cpu"):
            main(config(assets, tmp_path / "d", device="cuda"))


def test_trains_on_rows_built_by_the_pipeline(tmp_path):
    """Sample -> stage 0 -> 1 -> 2 via their CLIs, then training: the loss falls (memorising the
    train split), outputs carry the dataset's special ids, trimming cuts processed tokens."""
    from trainer_helpers import pipeline_padded_dataset

    ds = pipeline_padded_dataset(tmp_path / "pipe", max_length=160, limit=40)
    if ds is None:
        pytest.skip("the stage 0-2 scripts or data/nq_sample.jsonl.zst are not present")
    model_file = tiny_model(tmp_path / "m.pth", vocab_size=65536)
    out = tmp_path / "out"
    summary = main(TrainConfig(model_file=str(model_file), ds_dir=str(ds), output_dir=str(out), ctx_len=160,
                               bs=8, lr=1e-2, epochs=6, lora_r=8, lora_alpha=16, eval_fraction=0.2,
                               eval_every=0, log_every=1, group_by_length=True, seed=0))
    losses = [r["loss"] for r in metrics(out) if r["loss"] is not None]
    assert sum(losses[-8:]) < 0.6 * sum(losses[:8])
    for k in ("eval_loss", "eval_accuracy", "eval_roc_auc", "eval_pairwise_accuracy"):
        assert 0 <= summary[k] < float("inf")
    pad = orjson.loads((ds / "padding.json").read_bytes())
    _, ce = load_cross_encoder(model_file, out)  # the output folder resolves to final/
    assert [ce[k] for k in ("sep_token_id", "cls_token_id", "pad_token_id", "max_length")] == \
        [pad[k] for k in ("sep_token_id", "cls_token_id", "pad_token_id", "max_length")]
    assert summary["tokens_processed"] < summary["tokens_real"] * 160 / pad["length"]["mean"]
