"""DDP under torchrun (2 CPU processes, gloo): runs, and matches one process on the same rows.

With rows shuffled individually, the global plan at --bs b cut among 2 processes gives step i
the rows that one process at --bs 2b sees in its batch i; DDP averages the two per-process mean
gradients, which is the mean gradient over the union. With dropout off the weights must agree.
"""
import orjson
import torch
from safetensors.torch import load_file
from trainer_helpers import two_process_run

from cross_encoder.training.config import TrainConfig
from cross_encoder.training.trainer import main


def test_torchrun_two_process_gloo_matches_single_process(tmp_path):
    model_file, ds, out, proc = two_process_run()  # --bs 3 on each of 2 processes
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = orjson.loads((out / "config.json").read_bytes())
    assert cfg["resolved"]["world_size"] == 2
    rows = [orjson.loads(line) for line in (out / "metrics.jsonl").read_bytes().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["eval_rows"] == 18  # both processes' shares of the 6 held-out groups were gathered
    assert (out / "checkpoint-2").is_dir() and (out / "final").is_dir()

    single = tmp_path / "single"
    main(TrainConfig(model_file=str(model_file), ds_dir=str(ds), output_dir=str(single), ctx_len=64, bs=6,
                     lr=5e-3, lora_r=4, lora_alpha=8, lora_dropout=0.0, eval_fraction=0.25, eval_every=2,
                     log_every=1, save_every=0, seed=0, max_steps=4, device="cpu", metric_for_best_model="eval_loss",
                     greater_is_better=True, early_stopping_patience=1))
    a = load_file(str(out / "final" / "adapter_model.safetensors"))
    b = load_file(str(single / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)
    singles = [orjson.loads(line) for line in (single / "metrics.jsonl").read_bytes().splitlines()]
    for r, s in zip(rows, singles):  # per-step losses are the mean over both processes
        assert abs(r["loss"] - s["loss"]) < 1e-4
        assert abs(r.get("eval_loss", 0.0) - s.get("eval_loss", 0.0)) < 1e-4
    # best/ and early stopping: the same decisions as one process, taken by both processes together.
    for key in ("best_step", "evals_without_improvement", "early_stop"):
        assert [r.get(key) for r in rows] == [s.get(key) for s in singles], key
    step = lambda d: orjson.loads((d / "best" / "cross_encoder_config.json").read_bytes())["step"]  # noqa: E731
    assert step(out) == step(single)
