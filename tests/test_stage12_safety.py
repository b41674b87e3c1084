"""Stages 1 and 2 under abuse: output folders that are not theirs, --overwrite, dead workers,
Ctrl-C/SIGTERM, stale temps, missing or damaged stage-1 shards, hostile lines, progress in logs."""
from __future__ import annotations

import os
import shutil
import signal

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from process_helpers import (SAMPLE, dead_pid, finish, one_error_line, run, start, temps_beside, wait_until,
                             worker_pids)
from stage12_helpers import make_records, write_jsonl

from long_ctx.common.cli import UsageError
from long_ctx.common.line_reader import InputFileError
from long_ctx.stage0.driver import Stage0Config
from long_ctx.stage0.driver import main as stage0
from long_ctx.stage1 import Stage1Config
from long_ctx.stage1 import main as stage1
from long_ctx.stage2 import Stage2Config
from long_ctx.stage2 import main as stage2

S1, S2 = "1_create_datasets.py", "2_create_padded_data.py"


@pytest.fixture(scope="module")
def qpn(tmp_path_factory):
    """Stage-0 output of the sample (200 records) and the same 30 times over (6000: a run to interrupt)."""
    tmp = tmp_path_factory.mktemp("qpn")
    stage0(Stage0Config(str(SAMPLE), str(tmp / "qpn.jsonl"), num_splits=1, progress=False))
    (tmp / "qpn30.jsonl").write_bytes((tmp / "qpn.jsonl").read_bytes() * 30)
    return tmp / "qpn.jsonl", tmp / "qpn30.jsonl"


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory):
    """A stage-1 dataset of 30 records in 3 shards."""
    tmp = tmp_path_factory.mktemp("ds")
    src = write_jsonl(tmp / "q.jsonl", make_records(30, seed=5, doc_words=(0, 20)))
    stage1(Stage1Config(str(src), str(tmp / "ds"), num_proc=1, rows_per_shard=10, progress=False))
    return tmp / "ds"


def _copy(ds, tmp_path):
    return shutil.copytree(ds, tmp_path / "ds_copy")


def _s2(ds, out, **kw):
    return Stage2Config(str(ds), 32, output_dir=str(out), progress=False, **kw)


def _tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


# --- output folders that are not the stage's own -------------------------------------------------


def test_stage1_into_the_folder_holding_its_input_and_the_users_files_is_refused(tmp_path, qpn):
    # The report: `--output_dir proj` deleted proj/notes.txt and the input proj/qpn.jsonl.
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("n")
    shutil.copy(qpn[0], proj / "qpn.jsonl")
    before = _tree(proj)
    for extra in ([], ["--overwrite"]):
        res = run(S1, "--input_file", proj / "qpn.jsonl", "--output_dir", proj, "--num_proc", 1, *extra, cwd=tmp_path)
        assert res.returncode == 1
        assert "contains the input" in one_error_line(res.stderr)
    res = run(S1, "--input_file", proj / "qpn.jsonl", "--output_dir", ".", "--num_proc", 1, cwd=proj)
    assert "is the current folder" in one_error_line(res.stderr) or "contains the input" in res.stderr
    assert "PosixPath" not in res.stderr
    assert _tree(proj) == before and sorted(p.name for p in tmp_path.iterdir()) == ["proj"]


def test_stage2_into_the_folder_holding_its_input_is_refused(tmp_path, small_ds):
    proj = tmp_path / "proj"
    shutil.copytree(small_ds, proj / "ds")
    (proj / "notes.txt").write_text("n")
    before = _tree(proj)
    res = run(S2, "--ds_dir", proj / "ds", "--max_length", 32, "--output_dir", proj, "--overwrite", cwd=tmp_path)
    assert res.returncode == 1 and "contains the input" in one_error_line(res.stderr)
    with pytest.raises(UsageError, match="lies inside the input"):
        stage2(_s2(proj / "ds", proj / "ds" / "padded"))
    assert _tree(proj) == before


@pytest.mark.parametrize("stage", [1, 2])
def test_an_existing_file_is_never_turned_into_a_dataset(tmp_path, small_ds, qpn, stage):
    target = tmp_path / "thesis.pdf"
    target.write_bytes(b"%PDF precious")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        if stage == 1:
            stage1(Stage1Config(str(qpn[0]), str(target), num_proc=1, progress=False, overwrite=True))
        else:
            stage2(_s2(small_ds, target, overwrite=True))
    assert target.read_bytes() == b"%PDF precious" and not temps_beside(target)


def test_overwrite_replaces_only_an_earlier_output_of_the_same_stage(tmp_path, small_ds):
    src = write_jsonl(tmp_path / "q.jsonl", make_records(12, seed=6))
    out = tmp_path / "ds"
    stage1(Stage1Config(str(src), str(out), num_proc=1, progress=False))
    with pytest.raises(UsageError, match="earlier run; pass --overwrite"):
        stage1(Stage1Config(str(src), str(out), num_proc=1, progress=False, limit=5))
    stats = stage1(Stage1Config(str(src), str(out), num_proc=1, progress=False, limit=5, overwrite=True))
    assert stats["records_written"] == 5 == pq.read_table(out / "train-00000-of-00001.parquet").num_rows

    padded = tmp_path / "padded"
    stage2(_s2(out, padded))
    with pytest.raises(UsageError, match="pass --overwrite"):
        stage2(_s2(out, padded))
    assert stage2(_s2(out, padded, overwrite=True))["num_rows"] > 0
    # Each stage's marker is its own: a stage-2 folder is not a stage-1 output, nor the reverse.
    with pytest.raises(UsageError, match="not a stage-1 dataset"):
        stage1(Stage1Config(str(src), str(padded), num_proc=1, progress=False, overwrite=True))
    with pytest.raises(UsageError, match="not a stage-2 dataset"):
        stage2(_s2(small_ds, out, overwrite=True))
    # A folder of the user's, or a stats.json of another tool: never, not even with --overwrite.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "stats.json").write_text('{"records_written": 3}')
    with pytest.raises(UsageError, match="not a stage-1 dataset"):
        stage1(Stage1Config(str(src), str(mine), num_proc=1, progress=False, overwrite=True))
    (out / "notes.txt").write_text("added by the user")
    with pytest.raises(UsageError, match="files it did not write"):
        stage1(Stage1Config(str(src), str(out), num_proc=1, progress=False, overwrite=True))
    assert (out / "notes.txt").read_text() == "added by the user" and (mine / "stats.json").exists()


def test_stage1_input_that_is_a_folder_and_progress_lines_in_a_log(tmp_path, small_ds):
    res = run(S1, "--input_file", tmp_path, "--output_dir", tmp_path / "o", cwd=tmp_path)
    assert "is a folder, not a file" in one_error_line(res.stderr)
    src = write_jsonl(tmp_path / "q.jsonl", make_records(8, seed=7))
    res = run(S1, "--input_file", src, "--output_dir", tmp_path / "ds", "--num_proc", 1, cwd=tmp_path)
    assert res.returncode == 0 and "\r" not in res.stderr and "stage 1: 100%" in res.stderr
    res = run(S2, "--ds_dir", tmp_path / "ds", "--max_length", 64, cwd=tmp_path)
    assert res.returncode == 0 and "\r" not in res.stderr and "stage 2: 100%" in res.stderr


# --- a killed worker, Ctrl-C, SIGTERM, stale temps ------------------------------------------------


def _stage1_running(proc, out):
    def ready():
        temps = temps_beside(out)
        return len(worker_pids(proc.pid)) >= 2 and any(list(t.glob(".part-*")) for t in temps)
    return ready


def _start_stage1(qpn30, out, cwd):
    return start(S1, "--input_file", qpn30, "--output_dir", out, "--num_proc", 2, "--chunk_size", 16,
                 "--row_group_rows", 64, "--no_progress", cwd=cwd)


def test_stage1_killed_worker_fails_fast_with_one_line_and_no_output(tmp_path, qpn):
    out = tmp_path / "ds"
    proc = _start_stage1(qpn[1], out, tmp_path)
    wait_until(_stage1_running(proc, out), proc)
    os.kill(worker_pids(proc.pid)[0], signal.SIGKILL)
    rc, _, err, seconds = finish(proc)
    assert rc == 1 and seconds < 10
    assert "worker process ended abruptly" in one_error_line(err)
    assert not out.exists() and not temps_beside(out)


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_stage1_interrupted_prints_one_line_and_leaves_nothing(tmp_path, qpn, how):
    out = tmp_path / "ds"
    proc = _start_stage1(qpn[1], out, tmp_path)
    wait_until(_stage1_running(proc, out), proc)
    if how == "ctrl_c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    rc, _, err, _ = finish(proc)
    assert rc == (130 if how == "ctrl_c" else 143)
    assert f"nothing was written to {out}" in one_error_line(err, "interrupted: ")
    assert not out.exists() and not temps_beside(out)


def test_stage2_ctrl_c_prints_one_line_and_keeps_the_earlier_output(tmp_path, qpn):
    ds = tmp_path / "ds"
    stage1(Stage1Config(str(qpn[1]), str(ds), num_proc=1, progress=False))
    out = tmp_path / "padded"
    stage2(Stage2Config(str(ds), 64, output_dir=str(out), progress=False, read_batch_records=8))
    before = _tree(out)
    proc = start(S2, "--ds_dir", ds, "--max_length", 64, "--output_dir", out, "--rows_per_shard", 20, "--overwrite",
                 "--no_progress", cwd=tmp_path)
    wait_until(lambda: any(len(list(t.glob(".part-*"))) > 3 for t in temps_beside(out)), proc)
    os.killpg(proc.pid, signal.SIGINT)
    rc, _, err, _ = finish(proc)
    assert rc == 130 and "nothing was written" in one_error_line(err, "interrupted: ")
    assert _tree(out) == before and not temps_beside(out)


def test_stale_temp_folders_of_dead_runs_are_removed(tmp_path):
    src = write_jsonl(tmp_path / "q.jsonl", make_records(5, seed=8))
    stale = tmp_path / f".ds.{dead_pid()}.x1y2z3w4.tmp"
    old = tmp_path / f".ds.old-{dead_pid()}"
    live = tmp_path / f".ds.{os.getpid()}.x1y2z3w4.tmp"
    for d in (stale, old, live):
        d.mkdir()
        (d / ".part-00000.parquet").write_bytes(b"x" * 1000)
    stage1(Stage1Config(str(src), str(tmp_path / "ds"), num_proc=1, progress=False))
    assert not stale.exists() and not old.exists() and live.exists()


# --- missing, extra or damaged stage-1 shards ----------------------------------------------------


def test_a_missing_extra_or_replaced_shard_is_refused_by_name(tmp_path, small_ds):
    ds = _copy(small_ds, tmp_path)
    (ds / "train-00001-of-00003.parquet").unlink()
    with pytest.raises(InputFileError, match=r"1 of its 3 shards are missing \(train-00001-of-00003.parquet\)"):
        stage2(_s2(ds, tmp_path / "o"))
    res = run(S2, "--ds_dir", ds, "--max_length", 32, "--output_dir", tmp_path / "o", cwd=tmp_path)
    assert "train-00001-of-00003.parquet" in one_error_line(res.stderr)

    shutil.copy(small_ds / "train-00001-of-00003.parquet", ds / "train-00001-of-00003.parquet")
    shutil.copy(small_ds / "train-00001-of-00003.parquet", ds / "train-00000-of-00002.parquet")
    with pytest.raises(InputFileError, match="shards of different runs are mixed"):
        stage2(_s2(ds, tmp_path / "o"))
    (ds / "train-00000-of-00002.parquet").rename(ds / "train-00003-of-00003.parquet")
    with pytest.raises(InputFileError, match="unexpected shard"):
        stage2(_s2(ds, tmp_path / "o"))
    (ds / "train-00003-of-00003.parquet").unlink()
    # Same names, fewer rows: a shard replaced by one of another run.
    table = pq.read_table(ds / "train-00002-of-00003.parquet")
    pq.write_table(table.slice(0, 4), ds / "train-00002-of-00003.parquet")
    with pytest.raises(InputFileError, match="hold 24 records but stats.json says 30"):
        stage2(_s2(ds, tmp_path / "o"))
    (ds / "stats.json").unlink()
    with pytest.raises(InputFileError, match="no stats.json"):
        stage2(_s2(ds, tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "footer_bit_flip", "data_bit_flip", "wrong_types"])
def test_a_damaged_or_wrong_schema_shard_is_one_line_naming_the_file(tmp_path, small_ds, damage):
    ds = _copy(small_ds, tmp_path)
    shard = ds / "train-00001-of-00003.parquet"
    size = shard.stat().st_size
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: size // 2])
    elif damage == "random_bytes":
        shard.write_bytes(os.urandom(size))
    elif damage == "footer_bit_flip":
        _flip_byte(shard, size - 7)  # the footer's length
    elif damage == "data_bit_flip":  # in the token ids stage 2 reads: caught by the page checksums
        group = pq.ParquetFile(shard).metadata.row_group(0)
        chunk = next(c for c in map(group.column, range(group.num_columns))
                     if c.path_in_schema == "positive.list.element")
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        _flip_byte(shard, start + chunk.total_compressed_size // 2)
    else:
        table = pq.read_table(shard)
        as_text = pa.array([str(x) for x in table.column("question").to_pylist()])
        pq.write_table(table.set_column(0, "question", as_text), shard)
    res = run(S2, "--ds_dir", ds, "--max_length", 32, "--output_dir", tmp_path / "o", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "train-00001-of-00003.parquet" in one_error_line(res.stderr)
    assert not (tmp_path / "o").exists() and not temps_beside(tmp_path / "o")


# --- hostile lines ----------------------------------------------------------------------------------


def test_stage1_skips_a_deeply_nested_line_as_invalid_json(tmp_path):
    records = make_records(4, seed=9)
    deep = orjson.dumps(records[0])[:-1] + b', "meta": ' + b"[" * 2000 + b"]" * 2000 + b"}\n"
    src = write_jsonl(tmp_path / "q.jsonl", [records[0], deep, *records[1:]])
    stats = stage1(Stage1Config(str(src), str(tmp_path / "ds"), num_proc=1, progress=False))
    assert stats["skipped_by_reason"] == {"invalid_json": 1} and stats["records_written"] == 4
