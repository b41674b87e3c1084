"""The shared output safety of long_ctx.common.atomic: path checks, atomic files/folders, stale temps."""
from __future__ import annotations

import os

import orjson
import pytest
from process_helpers import dead_pid

from long_ctx.common.atomic import (atomic_dir, atomic_file, check_output_dir, check_output_file, holds_marker,
                                    remove_stale_temps)
from long_ctx.common.cli import UsageError

MARKER = {"stats.json": ("records_written", "shards")}
OWN = ("train-*.parquet", "stats.json", "README.md")


def _own_output(folder):
    folder.mkdir()
    (folder / "stats.json").write_bytes(orjson.dumps({"records_written": 1, "shards": []}))
    (folder / "train-00000-of-00001.parquet").write_bytes(b"x")
    return folder


def test_check_output_dir_accepts_new_empty_and_own_output_with_overwrite(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper", MARKER, "stage-1 dataset") == tmp_path / "new" / "deeper"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", MARKER, "stage-1 dataset")
    own = _own_output(tmp_path / "own")
    with pytest.raises(UsageError, match="earlier run; pass --overwrite"):
        check_output_dir(own, MARKER, "stage-1 dataset", own=OWN)
    check_output_dir(own, MARKER, "stage-1 dataset", overwrite=True, own=OWN)


@pytest.mark.parametrize("setup, message", [
    ("file", "is a file, not a folder"),
    ("foreign", "holds files that are not a stage-1 dataset"),
    ("weak_marker", "holds files that are not a stage-1 dataset"),
    ("own_plus_user_file", r"also files it did not write \(notes.txt\)"),
    ("contains_input", "contains the input"),
    ("is_input_parent_via_symlink", "contains the input"),
    ("inside_input", "lies inside the input"),
    ("cwd", "is the current folder or one above it"),
    ("root", "does not name a folder"),
])
def test_check_output_dir_refuses_what_is_not_its_own_even_with_overwrite(tmp_path, monkeypatch, setup, message):
    out, inputs = tmp_path / "out", []
    if setup == "file":
        out.write_text("mine")
    elif setup == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif setup == "weak_marker":  # some other tool's stats.json
        out.mkdir()
        (out / "stats.json").write_text('{"accuracy": 0.9}')
    elif setup == "own_plus_user_file":
        _own_output(out)
        (out / "notes.txt").write_text("mine")
    elif setup == "contains_input":
        out.mkdir()
        inputs = [out / "qpn.jsonl"]
        inputs[0].write_text("{}")
    elif setup == "is_input_parent_via_symlink":
        real = tmp_path / "real"
        real.mkdir()
        (real / "qpn.jsonl").write_text("{}")
        out.symlink_to(real)
        inputs = [real / "qpn.jsonl"]
    elif setup == "inside_input":
        inputs = [tmp_path]
        (tmp_path / "x").write_text("x")
    elif setup == "cwd":
        out.mkdir()
        (out / "sub").mkdir()
        monkeypatch.chdir(out / "sub")
        out = ".."
    elif setup == "root":
        out = "/"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError, match=message) as err:
        check_output_dir(out, MARKER, "stage-1 dataset", inputs=inputs, overwrite=True, own=OWN)
    assert "\n" not in str(err.value) and "PosixPath" not in str(err.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_holds_marker_names_and_keys(tmp_path):
    (tmp_path / "padding.json").write_text('{"max_length": 8}')
    assert holds_marker(tmp_path, ["padding.json"])
    assert holds_marker(tmp_path, {"padding.json": ["max_length"]})
    assert not holds_marker(tmp_path, {"padding.json": ["max_length", "row_format"]})
    (tmp_path / "stats.json").write_text("not json")
    assert not holds_marker(tmp_path, {"stats.json": ["x"]})
    assert not holds_marker(tmp_path / "missing", ["padding.json"])


def test_check_output_file(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("{}")
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    hard = tmp_path / "hard.jsonl"
    os.link(src, hard)
    (tmp_path / "f").write_text("x")
    for path, message in [(src, "is the input"), (link, "is the input"), (hard, "is the input"),
                          (tmp_path, "is a folder"), (f"{tmp_path}/", "names a folder"),
                          (tmp_path / "f" / "o.jsonl", "is a file, so no folder can be made there")]:
        with pytest.raises(UsageError, match=message):
            check_output_file(path, [src])
    (tmp_path / "old.jsonl").write_text("an earlier result")  # a file the user named may be replaced
    assert check_output_file(tmp_path / "old.jsonl", [src]) == tmp_path / "old.jsonl"
    assert src.read_text() == "{}"


def test_atomic_file_and_dir_leave_nothing_on_failure_and_never_replace_a_file(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as fh:
            fh.write(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "x").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_text("the user's file")
    with pytest.raises(UsageError, match="is a file"):
        with atomic_dir(target):
            pass
    assert target.read_text() == "the user's file" and sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]
    with atomic_dir(folder) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(folder) as tmp:  # replaces a whole folder, leaving nothing beside it
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in folder.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "out.jsonl"]


def test_remove_stale_temps_only_of_dead_processes_and_only_of_that_name(tmp_path):
    dead, live = dead_pid(), os.getpid()
    names = {
        f".out.jsonl.{dead}.k2j4h5g1.tmp": True,
        f".out.jsonl.old-{dead}": True,
        f".out.jsonl.{live}.k2j4h5g1.tmp": False,  # a run still going
        f".other.jsonl.{dead}.k2j4h5g1.tmp": False,  # another output's
        "out.jsonl": False,
        f".out.jsonl.{dead}.tmp": False,  # not a name atomic_* makes
    }
    for name in names:
        if "old-" in name:
            (tmp_path / name).mkdir()
            (tmp_path / name / "shard").write_text("x")
        else:
            (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path / "out.jsonl")
    assert sorted(p.name for p in removed) == sorted(n for n, stale in names.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in names.items() if not stale)
    with atomic_file(tmp_path / "other.jsonl") as fh:  # every atomic write cleans up its own name first
        fh.write(b"x")
    assert not (tmp_path / f".other.jsonl.{dead}.k2j4h5g1.tmp").exists()
