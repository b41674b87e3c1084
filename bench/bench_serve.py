"""Benchmark the rerank server (cross_encoder/4_serve.py) under a bounded load, against the batch
scorer's ceiling measured in the same run.

The model is a random RWKV-5 with an untrained LoRA adapter (speed does not depend on the weights).
Requests are the bundled sample's NQ questions with their first `--docs` documents. For each
server setting, `--clients` concurrent clients (one keep-alive connection each) post one request
after another for `--seconds` seconds to `/rerank` (TEI, raw scores) and then `/v1/rerank`
(Cohere); the settings are

  * batching: the defaults (up to 64 documents per model call gathered from concurrent requests,
    waiting at most 2 ms);
  * one request per call: `--max_batch_docs <docs> --batch_wait_ms 0` (batches within a request only);
  * off: `--max_batch_docs 1` (one document per model call).

The ceiling is `Reranker.score_many` in this process over the same pools, 16 questions per call
(what `cross_encoder/3_rerank.py` does), while the servers sit idle. Every response's scores are
checked against it. The machine is shared, so all servers stay up and `--rounds` rounds run the
ceiling and every row in turn; a row reports medians over rounds and its ratio to the ceiling of
the same round. Prints a markdown table: requests/s, documents/s, latency p50/p95/p99,
documents per model call, the share of the ceiling's documents/s, the share of the time the
model worker spent in model calls, and CPU use of server and client.

    python bench/bench_serve.py [--shapes tiny small] [--docs 10 2] [--clients 16] [--seconds 5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "serve"
SAMPLE = REPO / "data" / "nq_sample.jsonl.zst"
SHAPES = {"tiny": (2, 128, 32), "small": (6, 512, 64)}  # n_layer, n_embd, head_size
SEP, CLS, PAD = 2, 1, 0


def make_assets(shape: str, max_length: int) -> tuple[Path, Path]:
    """A random base checkpoint and an untrained adapter folder as the trainer writes them."""
    from cross_encoder.modeling import CrossEncoder, attach_lora, make_lora_config
    from cross_encoder.modeling.adapter_dirs import CE_CONFIG_NAME
    from cross_encoder.rwkv5 import load_rwkv5, make_config, write_random_checkpoint
    from long_ctx.common.atomic import atomic_dir, write_json

    n_layer, n_embd, head_size = SHAPES[shape]
    model_file = OUT / f"{shape}.pth"
    if not model_file.exists():
        write_random_checkpoint(model_file, n_layer=n_layer, n_embd=n_embd, head_size=head_size, seed=0)
    adapter = OUT / f"{shape}_L{max_length}_adapter"
    if not adapter.exists():
        peft_model = attach_lora(CrossEncoder(load_rwkv5(model_file, with_head=False), head_seed=0),
                                 make_lora_config(8, 16, 0.0, ["att.key", "att.value"]))
        cfg = make_config(n_layer, n_embd, head_size)
        with atomic_dir(adapter) as tmp:
            peft_model.save_pretrained(str(tmp))
            write_json(tmp / CE_CONFIG_NAME, {"sep_token_id": SEP, "cls_token_id": CLS, "pad_token_id": PAD,
                                              "max_length": max_length, "step": 0, "model": vars(cfg)})
    return model_file, adapter


def load_pools(n: int, docs: int) -> list[tuple[str, list[str]]]:
    from long_ctx.common.line_reader import iter_lines
    from long_ctx.stage0.nq_format import parse_line

    pools = []
    for _, line in iter_lines(SAMPLE):
        rec = parse_line(line)
        pools.append((rec.question, list(rec.documents[:docs])))
        if len(pools) == n:
            break
    return pools


def ceiling_run(rr, pools, seconds: float) -> float:
    """Documents/s of Reranker.score_many over the pools, 16 questions per call, for `seconds`."""
    n_docs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for a in range(0, len(pools), 16):
            rr.score_many(pools[a:a + 16])
            n_docs += sum(len(d) for _, d in pools[a:a + 16])
    return n_docs / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    started = 0

    def __init__(self, model_file: Path, adapter: Path, threads: int, *flags: str) -> None:
        Server.started += 1
        self.log = OUT / f"server_{Server.started}.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "cross_encoder" / "4_serve.py"),
                                          "--model_file", str(model_file), "--adapter", str(adapter), "--port", "0",
                                          "--device", "cpu", "--torch_threads", str(threads), *flags],
                                         stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        self.url = None

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            m = re.search(rb"at (http://127\.0\.0\.1:\d+) ", self.log.read_bytes())
            if m:
                self.url = m.group(1).decode()
                try:
                    if httpx.get(f"{self.url}/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    def scored(self) -> dict:
        return httpx.get(f"{self.url}/info").json()["scored"]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


async def run_load(url: str, endpoint: str, pools, expected, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    state = {"docs": 0, "errors": 0, "max_diff": 0.0}
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            j = k
            while time.perf_counter() < stop_at:
                i = j % len(pools)
                q, docs = pools[i]
                body = ({"query": q, "texts": docs, "truncate": True, "raw_scores": True} if endpoint == "/rerank"
                        else {"query": q, "documents": docs})
                t0 = time.perf_counter()
                r = await c.post(endpoint, json=body)
                latencies.append(time.perf_counter() - t0)
                j += clients
                if r.status_code != 200:
                    state["errors"] += 1
                    continue
                if endpoint == "/rerank":
                    got = {x["index"]: x["score"] for x in r.json()}
                    want = expected[i]
                else:  # relevance_score is the sigmoid: compare there
                    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
                    want = 1 / (1 + np.exp(-expected[i]))
                state["max_diff"] = max(state["max_diff"], float(np.abs(np.array([got[d] for d in range(len(docs))]) - want).max()))
                state["docs"] += len(docs)

    start, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - start
    return {"latencies": np.array(latencies), "elapsed": elapsed, "rps": len(latencies) / elapsed,
            "dps": state["docs"] / elapsed, "errors": state["errors"], "max_diff": state["max_diff"],
            "client_cpu": (time.process_time() - cpu0) / elapsed}


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def bench_shape(shape: str, a: argparse.Namespace, n_docs: int) -> None:
    from cross_encoder.serving.reranker import Reranker

    pools = load_pools(a.questions, n_docs)
    model_file, adapter = make_assets(shape, a.max_length)
    rr = Reranker.from_pretrained(model_file, adapter, device="cpu", batch_size=64, max_length=a.max_length)
    expected = [np.asarray(s) for s in rr.score_many(pools)]
    settings = [("batching (64 docs, 2 ms)", ()),
                (f"one request per call (--max_batch_docs {n_docs})", ("--max_batch_docs", str(n_docs), "--batch_wait_ms", "0")),
                ("off (--max_batch_docs 1)", ("--max_batch_docs", "1"))]
    # All servers load at once and wait idle while another one, or the ceiling, runs.
    servers = [Server(model_file, adapter, a.torch_threads, "--max_length", str(a.max_length), *flags)
               for _, flags in settings]
    for server in servers:
        server.wait_ready()
        asyncio.run(run_load(server.url, "/rerank", pools, expected, a.clients, 1.0))  # warm-up
    rows: dict[tuple[int, str], list[dict]] = {}
    tops: list[float] = []
    for _ in range(a.rounds):  # interleaved, so a drift in machine speed hits every row alike
        top = ceiling_run(rr, pools, a.seconds)
        tops.append(top)
        for k, server in enumerate(servers):
            for endpoint in ("/rerank", "/v1/rerank"):
                before, cpu0 = server.scored(), cpu_seconds(server.proc.pid)
                r = asyncio.run(run_load(server.url, endpoint, pools, expected, a.clients, a.seconds))
                after = server.scored()
                r["per_call"] = (after["documents"] - before["documents"]) / max(1, after["batches"] - before["batches"])
                r["server_cpu"] = (cpu_seconds(server.proc.pid) - cpu0) / r["elapsed"]
                r["busy"] = (after["busy_s"] - before["busy_s"]) / r["elapsed"]
                r["x_ceiling"] = r["dps"] / top
                rows.setdefault((k, endpoint), []).append(r)
    for server in servers:
        code = server.stop()
        if code != 0:
            raise RuntimeError(f"server exited with {code} on SIGTERM:\n{server.log.read_text()}")
    name = f"{shape} ({' x '.join(map(str, SHAPES[shape][:2]))})"
    print(f"| {name} | {n_docs} | ceiling: Reranker.score_many, 16 questions per call | - | {median(tops) / n_docs:.1f} | "
          f"{median(tops):.1f} | - | - | - | - | 1.00x | - | - | - | - |")
    for (k, endpoint), rs in rows.items():
        lat = np.sort(np.concatenate([r["latencies"] for r in rs])) * 1000
        p = [float(lat[min(len(lat) - 1, math.ceil(q / 100 * len(lat)) - 1)]) for q in (50, 95, 99)]
        errors = sum(r["errors"] for r in rs)
        print(f"| {name} | {n_docs} | {settings[k][0]} | `{endpoint}` | {median([r['rps'] for r in rs]):.1f}"
              f"{f' ({errors} errors)' if errors else ''} | {median([r['dps'] for r in rs]):.1f} | {p[0]:.0f} | {p[1]:.0f} | "
              f"{p[2]:.0f} | {median([r['per_call'] for r in rs]):.1f} | {median([r['x_ceiling'] for r in rs]):.2f}x | "
              f"{median([r['busy'] for r in rs]):.0%} | {median([r['server_cpu'] for r in rs]):.0%} | "
              f"{median([r['client_cpu'] for r in rs]):.0%} | "
              f"{max(r['max_diff'] for r in rs):.1e} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["tiny"], choices=list(SHAPES), help="model shapes to run")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients, one request at a time each")
    p.add_argument("--seconds", type=float, default=5.0, help="load duration per row and round (the ceiling runs as long)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all rows; a row reports its median")
    p.add_argument("--docs", type=int, nargs="+", default=[10, 2], help="documents per request (the first of each sample pool); one table block each")
    p.add_argument("--questions", type=int, default=64, help="distinct requests (sample questions), used in turn")
    p.add_argument("--max_length", type=int, default=256, help="row length limit (longer documents are cut)")
    p.add_argument("--torch_threads", type=int, default=1, help="torch threads of the server's model worker and of the ceiling")
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("server_*.log"):
        old.unlink()
    torch.set_num_threads(a.torch_threads)
    print(f"CPU x{os.cpu_count()}, torch {torch.__version__}, {a.torch_threads} torch thread(s) in the server's model "
          f"worker and in the ceiling; {a.clients} clients; {a.rounds} rounds x {a.seconds:g} s per row (medians; "
          f"latency percentiles over all rounds); {a.questions} distinct requests of NQ sample documents, rows <= "
          f"{a.max_length} tokens; load average before: {os.getloadavg()[0]:.2f}\n")
    print("| model | docs/request | setting | endpoint | requests/s | documents/s | p50 ms | p95 ms | p99 ms "
          "| docs per model call | x ceiling docs/s | worker busy | server CPU | client CPU | max score diff |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape in a.shapes:
        for n_docs in a.docs:
            bench_shape(shape, a, n_docs)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
