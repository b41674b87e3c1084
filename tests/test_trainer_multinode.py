"""Multi-node training is torchrun's: two launchers on this machine, each a "node" with one process,
meeting at a c10d rendezvous on a free port (gloo), train exactly what one node with two processes
trains. Same global ranks, same rows per rank, same all-reduces: the weights must be bit-identical."""
import socket
import subprocess

import orjson
import pytest
from trainer_helpers import (TORCHRUN, TRAIN_SCRIPT, adapter_weights, assert_same_adapter, ddp_args,
                             read_metrics_rows, torchrun_env, two_process_run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_rendezvous_matches_two_processes_on_one_node(tmp_path):
    model_file, ds, single_node, proc = two_process_run()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "multinode"  # one folder both "nodes" see, as a shared filesystem would give
    port = free_port()
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(i),
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                               "--rdzv_id", "multinode-test", "--rdzv_conf", "join_timeout=120",
                               str(TRAIN_SCRIPT), *ddp_args(model_file, ds, out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=torchrun_env())
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=300) for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    for p, (so, se) in zip(nodes, outputs):
        assert p.returncode == 0, so[-3000:] + se[-3000:]
    # Global rank 0 alone logs and writes, whichever node it landed on.
    assert sum("done: steps 0->4" in so for so, _ in outputs) == 1
    cfg = orjson.loads((out / "config.json").read_bytes())
    assert cfg["resolved"]["world_size"] == 2
    for name in ("checkpoint-2", "checkpoint-4", "final"):
        assert_same_adapter(adapter_weights(out / name), adapter_weights(single_node / name), atol=0)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # noqa: E731 (timings)
    assert strip(read_metrics_rows(out)) == strip(read_metrics_rows(single_node))
