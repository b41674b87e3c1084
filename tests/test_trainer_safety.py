"""Issue 9, the trainer: it never replaces what it did not write, never continues a run that does
not match, stops on divergence without saving non-finite weights, refuses damaged or incomplete
inputs with one line, falls back from a damaged checkpoint, and stops on Ctrl-C with one line."""
import os
import shutil
import subprocess
import sys

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from trainer_helpers import (adapter_weights, assert_same_adapter, cli_args, hooked_trainer, tiny_model, toy_config,
                             toy_dataset)

import cross_encoder.training.trainer as trainer
from cross_encoder.modeling import load_cross_encoder
from cross_encoder.training.data import load_padded_dataset
from cross_encoder.training.trainer import NONFINITE_LIMIT, main
from long_ctx.common.cli import UsageError


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    return tiny_model(d / "m.pth"), toy_dataset(d / "ds", n_groups=24, max_length=40)


def config(assets, out, **kw):
    return toy_config(assets, out, **{"device": "cpu", **kw})


RUN = dict(max_steps=6, save_every=2, save_total_limit=0)


@pytest.fixture(scope="module")
def finished(assets, tmp_path_factory):
    """An uninterrupted run (checkpoint-2, -4, -6, final/): the reference for every resume here."""
    out = tmp_path_factory.mktemp("finished") / "out"
    main(config(assets, out, **RUN))
    return out


def copy_run(src, dst, keep=("checkpoint-2", "checkpoint-4")):
    """A run killed after step 4 as it would look: the kept checkpoints, config and metrics."""
    dst.mkdir()
    for name in keep:
        shutil.copytree(src / name, dst / name)
    shutil.copy(src / "config.json", dst)
    shutil.copy(src / "metrics.jsonl", dst)
    return dst


adapter, assert_same = adapter_weights, assert_same_adapter


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ defect 3: only its own files


def test_foreign_final_folder_is_refused_not_deleted(assets, tmp_path):
    out = tmp_path / "out"
    (out / "final").mkdir(parents=True)
    (out / "final" / "thesis.txt").write_text("years of work")
    with pytest.raises(UsageError, match=r"final holds files that are not a checkpoint's \(thesis.txt\)"):
        main(config(assets, out, max_steps=2, lora_ckpt=str(out)))
    assert (out / "final" / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in out.iterdir()) == ["final"]


def test_finished_adapter_without_training_state_is_not_retrained(assets, tmp_path):
    out = tmp_path / "out"
    main(config(assets, out, max_steps=2))  # only final/
    (out / "final" / "training_state.pt").unlink()  # e.g. shipped without it
    before = snapshot(out)
    with pytest.raises(UsageError, match="finished adapter without training_state.pt"):
        main(config(assets, out, max_steps=2, lora_ckpt=str(out)))
    assert snapshot(out) == before  # adapter, metrics.jsonl and config.json untouched


@pytest.mark.parametrize("name, content", [
    ("config.json", b'{"my": "experiment settings"}\n'),
    ("metrics.jsonl", b'{"epoch": 1, "acc": 0.9}\n'),
    ("loss.png", b"\x89PNG my own plot"),
])
def test_users_own_files_in_output_dir_are_refused(assets, tmp_path, name, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    (out / "notes.txt").write_text("other files are fine")
    with pytest.raises(UsageError, match=f"{name}.*(not a config.json of this trainer|not written by this trainer)"):
        main(config(assets, out, max_steps=1))
    assert (out / name).read_bytes() == content
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "notes.txt"])


def test_output_dir_that_cannot_be_made_is_refused_before_training(assets, tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        main(config(assets, tmp_path / "a_file"))
    with pytest.raises(UsageError, match="is a file, so no folder can be made there"):
        main(config(assets, tmp_path / "a_file" / "out"))
    with pytest.raises(UsageError, match="inside the dataset folder"):
        main(config(assets, assets[1] / "ce"))
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(UsageError, match="permission denied"):
            main(config(assets, ro / "out"))


# ------------------------------------------------------------------ defect 10: resume must match


def test_resume_with_other_settings_is_refused_with_the_list(assets, finished, tmp_path):
    out = copy_run(finished, tmp_path / "out")
    before = snapshot(out)
    with pytest.raises(UsageError) as err:
        main(config(assets, out, **RUN, lora_ckpt=str(out), lr=1e-2, bs=4, seed=1, loss="grouped"))
    msg = str(err.value)
    for part in ("--lr 0.005 -> 0.01", "--bs 6 -> 4", "--seed 0 -> 1", "--loss bce -> grouped"):
        assert part in msg
    assert "\n" not in msg and "another --output_dir" in msg
    # Another dataset: other special ids.
    ds = tmp_path / "ds_sep3"
    shutil.copytree(assets[1], ds)
    meta = orjson.loads((ds / "padding.json").read_bytes())
    (ds / "padding.json").write_bytes(orjson.dumps({**meta, "sep_token_id": 3}))
    with pytest.raises(UsageError, match="dataset sep_token_id 2 -> 3"):
        main(config(assets, out, **RUN, lora_ckpt=str(out), ds_dir=str(ds)))
    # Another base model: of another architecture, and of the same one with other weights.
    wide = tiny_model(tmp_path / "wide.pth", n_embd=32)
    with pytest.raises(UsageError, match="base model architecture .*n_embd 64 -> 32"):
        main(config(assets, out, **RUN, lora_ckpt=str(out), model_file=str(wide)))
    other = tiny_model(tmp_path / "other.pth", seed=1)
    with pytest.raises(UsageError, match="base model weights"):
        main(config(assets, out, **RUN, lora_ckpt=str(out), model_file=str(other)))
    assert snapshot(out) == before


def test_resume_applies_and_records_flags_that_do_not_change_the_run(assets, finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "out")
    main(config(assets, out, **RUN, lora_ckpt=str(out), log_every=2, eval_every=3))
    assert "note: --log_every is 2 now, 1 when checkpoint-4 was written" in capsys.readouterr().out
    cfg = orjson.loads((out / "config.json").read_bytes())
    assert cfg["log_every"] == 2
    assert cfg["resolved"]["changed_on_resume"] == {"log_every": {"checkpoint": 1, "now": 2},
                                                    "eval_every": {"checkpoint": 0, "now": 3}}
    assert_same(adapter(finished / "final"), adapter(out / "final"))  # still the same run


# ------------------------------------------------------------------ defect 9: divergence


def test_divergence_stops_naming_the_steps_and_never_saves_nan(assets, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=rf"training diverged: .* not finite at steps \d+, \d+, \d+ "
                                         rf"\({NONFINITE_LIMIT} in a row\), so it stopped at step \d+"):
        main(config(assets, out, lr=1e6, max_grad_norm=0, max_steps=20, save_every=1, save_total_limit=0))
    assert not (out / "final").exists()
    saved = sorted(out.glob("checkpoint-*"))
    assert saved
    for ckpt in saved:
        assert all(torch.isfinite(t).all() for t in adapter(ckpt).values()), ckpt
    rows = [orjson.loads(x) for x in (out / "metrics.jsonl").read_bytes().splitlines()]
    assert rows[-1]["skipped_steps"] == NONFINITE_LIMIT - 1  # the last step raised before its row


def nan_loss_at(monkeypatch, steps):
    """Make the training loss NaN at the given optimizer steps (evaluation is left alone)."""
    real_get_loss, real_step = trainer.get_loss, trainer._Trainer.train_step
    current = [0]

    def train_step(self, micro):
        current[0] = self.step + 1
        return real_step(self, micro)

    def get_loss(name):
        fn = real_get_loss(name)
        return lambda s, y, g: fn(s, y, g) * (float("nan") if torch.is_grad_enabled() and current[0] in steps else 1)

    monkeypatch.setattr(trainer, "get_loss", get_loss)
    monkeypatch.setattr(trainer._Trainer, "train_step", train_step)


class Stop(Exception):
    pass


def stop_after(step):
    def hook(s):
        if s == step:
            raise Stop
    return hook


def test_a_nonfinite_step_makes_no_update_and_the_count_survives_a_resume(assets, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, {3, 4, 5})
    run = dict(max_steps=6, save_every=1, save_total_limit=0)
    out = tmp_path / "out"
    with pytest.raises(Stop):  # a run stopped after step 4, its 2nd non-finite step in a row
        main(config(assets, out, **run), on_step=stop_after(4))
    assert_same(adapter(out / "checkpoint-2"), adapter(out / "checkpoint-4"))  # no update at 3 and 4
    assert not all(torch.equal(a, b) for a, b in zip(adapter(out / "checkpoint-1").values(),
                                                     adapter(out / "checkpoint-2").values()))
    rows = [orjson.loads(x) for x in (out / "metrics.jsonl").read_bytes().splitlines()]
    assert [(r["step"], r["loss"] is None, r["skipped_steps"]) for r in rows] == \
        [(1, False, 0), (2, False, 0), (3, True, 1), (4, True, 2)]
    # Step 5 is the third in a row only for a resume that restored the count, as for the
    # uninterrupted run.
    with pytest.raises(UsageError, match=r"not finite at steps 3, 4, 5 \(3 in a row\), so it stopped at step 5"):
        main(config(assets, out, **run, lora_ckpt=str(out)))
    with pytest.raises(UsageError, match=r"not finite at steps 3, 4, 5 \(3 in a row\), so it stopped at step 5"):
        main(config(assets, tmp_path / "uninterrupted", **run))


# ------------------------------------------------------------------ defects 8, 14: damaged inputs


def test_incomplete_or_damaged_shards_are_refused_naming_the_file(assets, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(assets[1], ds)
    shard0, shard1 = ds / "train-00000-of-00002.parquet", ds / "train-00001-of-00002.parquet"
    good0 = shard0.read_bytes()
    # A missing shard: the trainer refuses instead of training on the rest.
    shard1.rename(tmp_path / "away.parquet")
    with pytest.raises(ValueError, match="missing train-00001-of-00002.parquet"):
        main(config(assets, tmp_path / "out", ds_dir=str(ds), max_steps=1))
    assert not (tmp_path / "out").exists()
    (tmp_path / "away.parquet").rename(shard1)
    # A shard listed in padding.json that is gone, and a stray one it does not list.
    meta = orjson.loads((ds / "padding.json").read_bytes())
    (ds / "padding.json").write_bytes(orjson.dumps({**meta, "shards": [shard0.name, shard1.name]}))
    shutil.copy(shard1, ds / "train-00002-of-00002.parquet")
    with pytest.raises(ValueError, match="train-00002-of-00002.parquet, which padding.json does not list"):
        load_padded_dataset(ds, progress=False)
    (ds / "train-00002-of-00002.parquet").unlink()
    # A shard replaced by one with fewer rows: the count no longer matches padding.json.
    table = pq.read_table(shard0)
    pq.write_table(table.slice(0, table.num_rows - 3), shard0)
    with pytest.raises(ValueError, match=f"hold {meta['num_rows'] - 3} rows but padding.json says {meta['num_rows']}"):
        load_padded_dataset(ds, progress=False)
    # Wrong schema: token ids as strings.
    pq.write_table(table.set_column(0, "input_ids", pa.array([[str(t) for t in r] for r in
                                                               table.column("input_ids").to_pylist()])), shard0)
    with pytest.raises(ValueError, match=f"{shard0.name}: column input_ids is list<element: string>"):
        load_padded_dataset(ds, progress=False)
    # Bit flips in the data pages and in the footer.
    for where in (len(good0) // 2, len(good0) - 12):
        flipped = bytearray(good0)
        for k in range(8):
            flipped[where + k] ^= 0xFF
        shard0.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match=shard0.name):
            load_padded_dataset(ds, progress=False)


RANDOM = np.random.default_rng(0).bytes(4096)


@pytest.mark.parametrize("content", [b"", b"hello, this is a text file\n", RANDOM, b"PK\x03\x04" + RANDOM],
                         ids=["empty", "text", "random", "zip_magic_then_random"])
def test_a_model_file_that_is_no_checkpoint_is_refused_before_the_data(assets, finished, tmp_path, content):
    bad = tmp_path / "model.pth"
    bad.write_bytes(content)
    # ds_dir does not exist: the model file is checked first.
    with pytest.raises(UsageError, match=r"--model_file .*model.pth (is empty|is not a PyTorch checkpoint|"
                                         r"is not a readable PyTorch checkpoint)"):
        main(config(assets, tmp_path / "out", model_file=str(bad), ds_dir=str(tmp_path / "no_ds")))
    with pytest.raises(UsageError, match="--model_file"):
        load_cross_encoder(bad, finished / "final")


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damaged", ["adapter_model.safetensors", "training_state.pt"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(assets, finished, tmp_path, capsys, damaged):
    out = copy_run(finished, tmp_path / "out")
    truncate(out / "checkpoint-4" / damaged)
    main(config(assets, out, **RUN, lora_ckpt=str(out)))
    printed = capsys.readouterr().out
    assert f"skipping damaged {out / 'checkpoint-4'}: {damaged} is damaged" in printed
    assert f"resuming from {out / 'checkpoint-2'} (step 2), the newest intact checkpoint" in printed
    assert_same(adapter(finished / "final"), adapter(out / "final"))  # and it is still exact
    # Evaluation's --adapter OUT resolution: a damaged final/ falls back to the newest checkpoint
    # (best/, which comes first, is damaged too here; its own order: tests/test_best_checkpoint.py).
    truncate(out / "final" / "adapter_model.safetensors")
    truncate(out / "best" / "adapter_model.safetensors")
    model, cfg = load_cross_encoder(assets[0], out)
    assert cfg["step"] == 6 and "note: using" in capsys.readouterr().err
    with pytest.raises(ValueError, match="adapter_model.safetensors is damaged"):
        load_cross_encoder(assets[0], out / "final")  # named explicitly: no silent substitute


# ------------------------------------------------------------------ defect 18: file modes


def test_every_checkpoint_file_follows_the_umask(assets, tmp_path):
    old = os.umask(0o027)
    try:
        import cross_encoder.training.outputs.checkpoints as ck

        ck._UMASK = 0o027  # read once at import, as atomic.py does
        main(config(assets, tmp_path / "out", max_steps=1))
    finally:
        os.umask(old)
        ck._UMASK = old
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out" / "final").iterdir()}
    assert modes["adapter_model.safetensors"] == 0o640
    assert set(modes.values()) == {0o640}, modes


# ------------------------------------------------------------------ defect 15: Ctrl-C


def test_ctrl_c_prints_one_line_naming_the_checkpoint_kept(assets, tmp_path):
    out = tmp_path / "out"
    cfg = config(assets, out, max_steps=8, save_every=2, lora_ckpt=str(out))
    script = hooked_trainer(tmp_path / "int.py", "    if step == 3:\n        os.kill(os.getpid(), signal.SIGINT)")
    proc = subprocess.run([sys.executable, "-u", str(script), *cli_args(cfg)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"interrupted: checkpoint-2 (step 2) is the newest checkpoint in {out}; rerun the same command to continue"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "config.json", "metrics.jsonl"]


# ------------------------------------------------------------------ DDP: deciding together, quietly

DDP_SETUP = """
RANK = int(os.environ.get("RANK", "0"))
INF_ON_RANK_1 = {2, 4, 5, 6}
current = []
real_step, real_get_loss = t._Trainer.train_step, t.get_loss
def train_step(self, micro):
    current[:] = [self]
    self.inject = RANK == 1 and self.step + 1 in INF_ON_RANK_1
    return real_step(self, micro)
def get_loss(name):
    fn = real_get_loss(name)
    # An infinite loss on rank 1 only; its gradient (of a constant added) stays finite.
    return lambda s, y, g: fn(s, y, g) + (float("inf") if torch.is_grad_enabled() and current[0].inject else 0.0)
t._Trainer.train_step, t.get_loss = train_step, get_loss
"""
DDP_ON_STEP = """    if step == 3:
        tr = current[0]
        torch.save({n: p.detach().clone() for n, p in tr.peft_model.named_parameters() if p.requires_grad},
                   tr.out.parent / f"rank{RANK}-step3.pt")"""


def test_ddp_processes_skip_and_stop_together_and_only_rank_0_prints(assets, tmp_path):
    """An infinite loss on rank 1 alone (finite gradients everywhere) at step 2, then at 4, 5, 6:
    both processes skip step 2 (same weights after step 3), both stop at step 6, one error line."""
    out = tmp_path / "out"
    script = hooked_trainer(tmp_path / "ddp.py", DDP_ON_STEP, setup=DDP_SETUP)
    cfg = config(assets, out, bs=3, max_steps=8, lora_dropout=0.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *cli_args(cfg)], capture_output=True, text=True, env=env, timeout=300)
    printed = proc.stdout + proc.stderr
    assert proc.returncode == 1, printed[-3000:]
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not finite at steps 4, 5, 6 (3 in a row), so it stopped at step 6" in errors[0], \
        printed[-3000:]
    # No process prints a traceback; what follows is torchrun's own failure report (not ours).
    assert "Traceback" not in printed.split("site-packages/torch/distributed/elastic")[0], printed[-3000:]
    rows = {r["step"]: r for r in map(orjson.loads, (out / "metrics.jsonl").read_bytes().splitlines())}
    assert [rows[s]["skipped_steps"] for s in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 3]
    w0, w1 = (torch.load(tmp_path / f"rank{r}-step3.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not (out / "final").exists()
