"""Stage 0 under abuse: dead workers, Ctrl-C, SIGTERM, stale temps, bad paths, pipes, hostile lines."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading

import orjson
import pytest
import zstandard
from process_helpers import (SAMPLE, dead_pid, finish, one_error_line, repeated_sample, run, start, temps_beside,
                             wait_until, worker_pids)
from stage0_helpers import ref_render

from long_ctx.stage0.driver import Stage0Config, main
from long_ctx.stage0.nq_format import SkipRecord, parse_line

S0 = "0_create_q_p_n.py"


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """1000 lines (~24 MB): a 2-worker run lasts a few seconds, long enough to interrupt."""
    return repeated_sample(tmp_path_factory.mktemp("big") / "big.jsonl", 5)


def _plain_sample(tmp_path):
    path = tmp_path / "sample.jsonl"
    path.write_bytes(zstandard.ZstdDecompressor().decompress(SAMPLE.read_bytes(), max_output_size=1 << 30))
    return path


def _running(proc, out):
    """The run is past start-up: both workers exist and results reach the temporary output."""
    return lambda: len(worker_pids(proc.pid)) >= 2 and any(t.stat().st_size > 0 for t in temps_beside(out))


# --- a worker killed (the out-of-memory killer), Ctrl-C, SIGTERM -------------------------------


def test_a_killed_worker_ends_the_run_at_once_with_one_error_and_no_output(tmp_path, big_input):
    out = tmp_path / "qpn.jsonl"
    proc = start(S0, "--input_file", big_input, "--output_file", out, "--num_splits", 2, "--no_progress", cwd=tmp_path)
    wait_until(_running(proc, out), proc)
    os.kill(worker_pids(proc.pid)[0], signal.SIGKILL)
    rc, _, err, seconds = finish(proc)
    assert rc == 1 and seconds < 10
    line = one_error_line(err)
    assert "worker process ended abruptly" in line and "SIGKILL" in line
    assert not out.exists() and not temps_beside(out) and not (tmp_path / "qpn.jsonl.stats.json").exists()


def test_ctrl_c_with_two_workers_prints_one_line_and_exits_130(tmp_path, big_input):
    out = tmp_path / "qpn.jsonl"
    proc = start(S0, "--input_file", big_input, "--output_file", out, "--num_splits", 2, "--no_progress", cwd=tmp_path)
    wait_until(_running(proc, out), proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    rc, _, err, seconds = finish(proc)
    assert rc == 130 and seconds < 10
    line = one_error_line(err, "interrupted: ")
    assert f"nothing was written to {out}" in line
    assert not out.exists() and not temps_beside(out)


def test_sigterm_leaves_no_temp_and_exits_143(tmp_path, big_input):
    out = tmp_path / "qpn.jsonl"
    proc = start(S0, "--input_file", big_input, "--output_file", out, "--num_splits", 2, "--no_progress", cwd=tmp_path)
    wait_until(_running(proc, out), proc)
    proc.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` or a job scheduler does
    rc, _, err, _ = finish(proc)
    assert rc == 143
    one_error_line(err, "interrupted: ")
    assert not out.exists() and not temps_beside(out)
    assert worker_pids(proc.pid) == []


def test_stale_temps_of_dead_processes_go_and_live_ones_stay(tmp_path):
    out = tmp_path / "qpn.jsonl"
    stale = tmp_path / f".qpn.jsonl.{dead_pid()}.abcd1234.tmp"
    stale_stats = tmp_path / f".qpn.jsonl.stats.json.{dead_pid()}.abcd1234.tmp"
    live = tmp_path / f".qpn.jsonl.{os.getpid()}.abcd1234.tmp"  # this test process is alive
    for p in (stale, stale_stats, live):
        p.write_bytes(b"partial output of another run")
    main(Stage0Config(str(SAMPLE), str(out), num_splits=1, limit=3, progress=False))
    assert len(out.read_bytes().splitlines()) == 3
    assert not stale.exists() and not stale_stats.exists()
    assert live.read_bytes() == b"partial output of another run"


# --- paths checked before the work --------------------------------------------------------------


def test_bad_output_paths_fail_before_any_work_with_one_line(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "taken.jsonl.stats.json").mkdir()  # the stats file's path is a folder
    cases = {
        str(tmp_path): "is a folder",
        ".": "is a folder",
        str(tmp_path / "a_file" / "qpn.jsonl"): "is a file, so no folder can be made there",
        str(tmp_path / "taken.jsonl"): "is a folder",
        str(SAMPLE): "is the input",
    }
    for output, message in cases.items():
        res = run(S0, "--input_file", SAMPLE, "--output_file", output, "--no_progress", cwd=tmp_path)
        assert res.returncode == 1, (output, res.stderr)
        assert message in one_error_line(res.stderr), output
        assert "PosixPath" not in res.stderr
    assert not (tmp_path / "taken.jsonl").exists()  # refused before the output was written
    assert (tmp_path / "a_file").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_location_is_refused_before_the_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    res = run(S0, "--input_file", SAMPLE, "--output_file", ro / "qpn.jsonl", "--no_progress", cwd=tmp_path)
    assert res.returncode == 1 and "permission denied" in one_error_line(res.stderr)


def test_input_that_is_a_folder_or_a_device_is_named_as_such(tmp_path):
    res = run(S0, "--input_file", tmp_path, "--output_file", tmp_path / "o.jsonl", cwd=tmp_path)
    assert "is a folder, not a file" in one_error_line(res.stderr)
    res = run(S0, "--input_file", "/dev/null", "--output_file", tmp_path / "o.jsonl", cwd=tmp_path)
    assert "is not a regular file or a pipe" in one_error_line(res.stderr)
    res = run(S0, "--input_file", tmp_path / "missing.jsonl", "--output_file", tmp_path / "o.jsonl", cwd=tmp_path)
    assert "no such file" in one_error_line(res.stderr)
    assert not (tmp_path / "o.jsonl").exists()


def test_pipes_are_read_like_files(tmp_path):
    plain = _plain_sample(tmp_path)
    reference = tmp_path / "ref.jsonl"
    main(Stage0Config(str(plain), str(reference), num_splits=1, limit=40, progress=False))
    # /dev/stdin fed by a pipe, as in `zstd -dc x.jsonl.zst | python 0_create_q_p_n.py --input_file /dev/stdin`
    out = tmp_path / "stdin.jsonl"
    with open(plain, "rb") as fh:
        res = subprocess.run([sys.executable, "long_ctx/0_create_q_p_n.py", "--input_file", "/dev/stdin",
                              "--output_file", str(out), "--limit", "40", "--num_splits", "2", "--no_progress"],
                             stdin=fh, capture_output=True, text=True, cwd=SAMPLE.parents[1])
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == reference.read_bytes()
    # a named pipe
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    writer = threading.Thread(target=lambda: fifo.write_bytes(plain.read_bytes()), daemon=True)
    writer.start()
    out2 = tmp_path / "fifo.jsonl"
    try:
        main(Stage0Config(str(fifo), str(out2), num_splits=1, progress=False))
    finally:
        writer.join(timeout=30)
        if writer.is_alive():  # the run never opened the pipe: release the writer
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    assert out2.read_bytes().splitlines()[:40] == reference.read_bytes().splitlines()


def test_zst_output_is_zstd(tmp_path):
    plain, packed = tmp_path / "q.jsonl", tmp_path / "q.jsonl.zst"
    main(Stage0Config(str(SAMPLE), str(plain), num_splits=1, limit=20, progress=False))
    main(Stage0Config(str(SAMPLE), str(packed), num_splits=2, limit=20, progress=False))
    assert packed.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # the zstd frame magic
    assert zstandard.ZstdDecompressor().decompress(packed.read_bytes(), max_output_size=1 << 30) == plain.read_bytes()
    assert orjson.loads((tmp_path / "q.jsonl.zst.stats.json").read_bytes())["records_written"] == 20


# --- hostile lines --------------------------------------------------------------------------------


DEEP = b"[" * 2000 + b"]" * 2000


def _good_text() -> str:
    return ref_render("who?", "Ann", "Ann did.", ["Ann wrote it.", "Bob sang.", "Cid ran."], 1)


@pytest.mark.parametrize("line", [
    b'{"text": ' + DEEP + b"}",
    b'{"meta": ' + DEEP + b', "text": ' + orjson.dumps(_good_text()) + b"}",  # in a field the parser skips
    b'{"text": ' + orjson.dumps(_good_text()) + b', "meta": {"a": ' + b'{"a": ' * 600 + b"1" + b"}" * 601 + b"}",
    ('{"text": ' + "[" * 2000 + "]" * 2000 + "}"),  # the evaluator passes str too
], ids=["in_text", "in_unused_field", "objects_in_unused_field", "str_line"])
def test_deeply_nested_lines_are_a_named_skip(line):
    with pytest.raises(SkipRecord) as err:
        parse_line(line)
    assert err.value.reason == "too_deeply_nested"


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine():
    nested = b'{"text": ' + orjson.dumps(_good_text()) + b', "meta": ' + b"[" * 511 + b"]" * 511 + b"}"
    assert parse_line(nested).answer == "Ann"
    text = ref_render("who?", "Ann", "Ann did.", ["Ann wrote it.", "{[" * 3000], 1)
    assert parse_line(b'{"text": ' + orjson.dumps(text) + b"}").documents[-1] == "{[" * 3000


def test_deep_lines_are_counted_and_the_run_goes_on_for_any_worker_count(tmp_path):
    lines = _plain_sample(tmp_path).read_bytes().splitlines()[:6]
    deep = [b'{"text": ' + DEEP + b"}", b'{"x": ' + DEEP + b', "text": ' + orjson.dumps(_good_text()) + b"}",
            b'{"x": ' + b"[" * 700 + b"]" * 700 + b', "text": ' + orjson.dumps(_good_text()) + b"}"]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines[:3] + deep + lines[3:]) + b"\n")
    outs = []
    for n in (1, 2):
        out = tmp_path / f"o{n}.jsonl"
        stats = main(Stage0Config(str(src), str(out), num_splits=n, progress=False))
        assert stats["skipped_by_reason"] == {"too_deeply_nested": 3}
        assert stats["records_written"] == 6
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


# --- negatives identical to the positive --------------------------------------------------------


def test_negatives_identical_to_the_positive_are_never_picked_and_are_counted(tmp_path):
    gold = "The  Velrin\tof Rinithol is a novel by Ann."
    docs = [gold, "The Velrin of Rinithol is a novel by Ann.", " The Velrin of\nRinithol is a novel by Ann. ",
            gold, "A cookbook about onions.", "Some other text about rivers."]
    rows = [orjson.dumps({"text": ref_render("who wrote the velrin of rinithol", "Ann", "Ann.", docs, 1)}),
            orjson.dumps({"text": ref_render("who wrote the velrin", "Ann", "Ann.", [gold, gold.lower(), gold], 1)})]
    src = tmp_path / "dup.jsonl"
    src.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "o.jsonl"
    for strategy in ("hardest", "least", "random"):
        stats = main(Stage0Config(str(src), str(out), num_splits=1, negative_strategy=strategy, num_negatives=5,
                                  filter_answer_docs=False, progress=False))
        recs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
        norm = " ".join(gold.split())
        assert [sorted(r["negative_ids"]) for r in recs] == [[5, 6], [2]]  # the lowercased copy differs
        assert all(" ".join(n.split()) != norm for r in recs for n in r["negatives"])
        assert stats["negatives_identical_to_positive_skipped"] == 3 + 1
        assert stats["records_with_fewer_negatives"] == 2


# --- progress written to a file or a pipe -------------------------------------------------------


def test_progress_to_a_pipe_is_plain_lines(tmp_path):
    res = run(S0, "--input_file", SAMPLE, "--output_file", tmp_path / "o.jsonl", "--num_splits", 1, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr
    progress = [line for line in res.stderr.splitlines() if line.startswith("stage 0")]
    assert len(progress) == 1 and "100%" in progress[0]  # only the final line on a run this short
