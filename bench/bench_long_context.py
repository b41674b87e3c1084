"""Long-context cost: the project's RWKV-5 against a same-shape transformer, T = 512 .. 32k, batch 1.

For each length T: forward and forward+backward tokens/s and peak memory of
  * RWKV-5 (`cross_encoder.rwkv5`, chunked WKV; on CUDA also the fused kernel when
    flash-linear-attention is importable), with and without gradient checkpointing;
  * a transformer encoder from HF `transformers`: BertModel with SDPA attention, the same layers and
    width, 64-wide heads, FFN 3.5 x width, random init (built from a BertConfig, nothing downloaded).
Both models: random weights, no dropout, embeddings frozen (the cross-encoder never trains them; a
dense 65536 x C gradient would add the same constant to both), every other weight trainable,
loss = mean(hidden^2).

On CPU each (T, pass) is timed in a fresh process, RWKV-5's and the transformer's calls interleaved,
and each case's memory is measured in another fresh process (bench/measure.py; peak RSS with every
large block mmap'd, so exactly what was live); on CUDA one process per model, memory =
torch.cuda.max_memory_allocated minus what was allocated before the case (the weights). Cases
predicted from the shorter lengths to pass --time-budget-s or --mem-budget-mib are skipped without
running; a running case that passes a budget is killed and reported as skipped too. Prints the tables, writes them to --out (markdown) and a log-log PNG
beside it.

    python bench/bench_long_context.py                                    # CPU, 6x512, 512..32k
    python bench/bench_long_context.py --device cuda --shape 24x1024 --lengths 4096,8192,16384
    python bench/bench_long_context.py --lengths 256,1024 --shape 2x64 --out /tmp/lc.md   # smoke run
"""
from __future__ import annotations

import argparse
import math
import platform
import signal
import sys
import time
from pathlib import Path

import measure
from measure import machine_load, run_budgeted, timed

from long_ctx.common.atomic import atomic_file

VOCAB = 65536
PASSES = ("fwd", "fwd+bwd", "fwd+bwd gc")
WARMUP_T = 1024  # CPU warm-up length: nothing on CPU depends on T, and a full-length warm-up at 32k costs minutes


# ------------------------------------------------------------------ cases (run in the child process)

def _build(model: str, n_layer: int, n_embd: int, head_size: int, max_t: int, device: str, dtype: str):
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if model == "rwkv":
        from cross_encoder.rwkv5 import make_config, random_rwkv5

        net = random_rwkv5(make_config(n_layer, n_embd, head_size=head_size, vocab_size=VOCAB), seed=0,
                           device=device, dtype=dt, with_head=False)
        net.emb.weight.requires_grad_(False)
        return net, lambda ids: net.hidden(ids)
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=n_embd, num_hidden_layers=n_layer,
                     num_attention_heads=n_embd // head_size, intermediate_size=int(n_embd * 3.5) // 32 * 32,
                     max_position_embeddings=max_t, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     attn_implementation="sdpa")
    torch.manual_seed(0)
    net = BertModel(cfg, add_pooling_layer=False).to(device=device, dtype=dt)
    for p in net.embeddings.parameters():
        p.requires_grad_(False)
    return net, lambda ids: net(input_ids=ids).last_hidden_state


def run_group(group: dict) -> list[dict]:
    """Run cases in one process; a model is built once for all its cases.

    group: shape (n_layer, n_embd, head_size), max_t, device, dtype, reps, max_timed_s, memory,
    cases [{pass, T, ref_T (optional), entries [{model, impl}]}]. Returns one result per entry.
      * memory False (timing): the entries of a case are timed with their calls interleaved (CPU:
        the RWKV-5 and transformer calls of one T and pass, so their ratio sees the same load; the
        process runs with glibc's defaults, as users do); an RWKV entry with ref_T also times
        T = ref_T just before and after, a paired reference for scaling. On CUDA a case has one
        entry, and its peak is torch.cuda.max_memory_allocated.
      * memory True (CPU): one entry per case, one call after a short warm-up, in a process started
        with every block >= 64 KiB mmap'd, so peak RSS minus RSS before is exactly what was live.
    """
    import torch

    device, cuda = group["device"], group["device"] == "cuda"
    nets: dict[str, tuple] = {}
    gen = torch.Generator().manual_seed(0)
    results: list[dict] = []
    for case in group["cases"]:
        T, pass_ = case["T"], case["pass"]
        ids = torch.randint(0, VOCAB, (1, T), generator=gen).to(device)
        short = ids[:, :min(T, WARMUP_T)]

        def make_step(entry: dict, x_full=ids):
            if entry["model"] not in nets:
                nets[entry["model"]] = _build(entry["model"], *group["shape"], group["max_t"], device, group["dtype"])
            net, fwd = nets[entry["model"]]

            def step(x=x_full):
                if entry["model"] == "rwkv":
                    net.wkv_impl = entry["impl"]
                    net.gradient_checkpointing = pass_.endswith("gc")
                if pass_ == "fwd":
                    net.eval()
                    with torch.no_grad():
                        fwd(x)
                else:
                    net.train()
                    net.zero_grad(set_to_none=True)
                    fwd(x).float().pow(2).mean().backward()
                if cuda:
                    torch.cuda.synchronize()
            return step

        entries = case["entries"]
        steps = [make_step(e) for e in entries]
        res = [{**e, "pass": pass_, "T": T} for e in entries]
        if group["memory"]:
            results += [{**r, "peak_mib": timed(st, 1, warmup=lambda st=st: st(short))["peak"]}
                        for r, st in zip(res, steps)]
            continue
        ref_T = case.get("ref_T")
        refs = {i: (lambda st=st: st(ids[:, :ref_T])) for i, (e, st) in enumerate(zip(entries, steps))
                if ref_T and e["model"] == "rwkv"}
        try:
            # T = ref_T just before and after, in this process and on this model: "vs the shortest
            # length" then compares calls that saw the machine as this case did.
            before = {i: timed(f, group["reps"]) for i, f in refs.items()}
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                t = [timed(steps[0], group["reps"], max_timed_s=group["max_timed_s"])]
                t[0]["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                t = measure.timed_alternating(steps, group["reps"], [lambda st=st: st(short) for st in steps],
                                              group["max_timed_s"])
            after = {i: timed(f, group["reps"]) for i, f in refs.items()}
        except torch.cuda.OutOfMemoryError:
            for net, _ in nets.values():
                net.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            results += [{**r, "skipped": "CUDA out of memory"} for r in res]
            continue
        # The rate every ratio uses: on CPU per CPU second (one thread: what the case costs on its
        # own, however many other processes share the cores), on CUDA per wall second.
        key = "sec" if cuda else "cpu_sec"
        for i, (r, ti) in enumerate(zip(res, t)):
            r.update(sec=ti["sec"], cpu_sec=ti["cpu_sec"], tok_s=T / ti[key], tok_s_wall=T / ti["sec"],
                     calls=ti["calls"], peak_mib=ti.get("peak_mib", float("nan")))
            if i in refs:
                r["ref_tok_s"] = 2 * ref_T / (before[i][key] + after[i][key])
        results += res
    return results


# ------------------------------------------------------------------ budgets

def _same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("model", "impl", "pass"))


def predicted_over_budget(done: list[dict], case: dict, time_budget_s: float, mem_budget_mib: float) -> str | None:
    """Why `case` would pass a budget, extrapolated from the same variant at shorter lengths, or None.

    Time grows as T^p with p measured between the two longest shorter lengths (at least 1); with
    one earlier length p = 1 (optimistic: only cases sure to pass are skipped). Memory grows
    linearly through the two longest earlier points.
    """
    prev = sorted((r for r in done if _same(r, case) and "sec" in r and r["T"] < case["T"]), key=lambda r: r["T"])
    if not prev:
        return None
    last, T = prev[-1], case["T"]
    p = 1.0
    if len(prev) >= 2:
        first = prev[-2]
        p = max(1.0, math.log(last["sec"] / first["sec"]) / math.log(last["T"] / first["T"]))
    sec = last["sec"] * (T / last["T"]) ** p
    # at least 2 calls at T: on CPU 1 timed + 1 for memory, on CUDA a warm-up + 1 timed
    if 2 * sec > time_budget_s:
        return (f"predicted {2 * sec:.0f} s for 2 calls (timed + memory; T^{p:.2f} from T={last['T']}) > "
                f"time budget {time_budget_s:.0f} s")
    if len(prev) >= 2:
        slope = (last["peak_mib"] - prev[-2]["peak_mib"]) / (last["T"] - prev[-2]["T"])
        mem = last["peak_mib"] + max(slope, 0.0) * (T - last["T"])
    else:
        mem = last["peak_mib"] * T / last["T"]
    if mem > mem_budget_mib:
        return f"predicted peak {mem:.0f} MiB (linear from T={last['T']}) > memory budget {mem_budget_mib:.0f} MiB"
    return None


# ------------------------------------------------------------------ the run

def passes(fused: bool) -> list[tuple[str, list[dict]]]:
    """(pass, entries) in run order; the entries of a pass are timed together."""
    rwkv = [{"model": "rwkv", "impl": i} for i in (("chunked", "fused") if fused else ("chunked",))]
    bert = [{"model": "bert", "impl": "sdpa"}]
    return [("fwd", rwkv + bert), ("fwd+bwd", rwkv + bert), ("fwd+bwd gc", rwkv)]


def measure_all(args: argparse.Namespace, shape: tuple[int, int, int], fused: bool) -> list[dict]:
    lengths = sorted(args.lengths)
    base = {"shape": shape, "max_t": max(lengths), "device": args.device, "dtype": args.dtype, "reps": args.reps,
            "max_timed_s": args.max_timed_s, "memory": False}
    results: list[dict] = []
    if args.device == "cuda":
        # One process per model, every case of it in turn: the allocator's own peak is per case,
        # a case that runs out of memory is reported and the next one runs.
        for model in ("rwkv", "bert"):
            cases = [{"pass": p, "T": T, "entries": [e]} for T in lengths for p, es in passes(fused)
                     for e in es if e["model"] == model]
            got = run_budgeted(0, run_group, ({**base, "cases": cases},), mmap_all=False,
                               time_budget_s=args.time_budget_s * len(cases))
            if isinstance(got, dict):  # the whole process passed its budget
                got = [{**c["entries"][0], "pass": c["pass"], "T": c["T"], **got} for c in cases]
            for r in got:
                _print_progress(r)
            results += got
        return results
    budgets = {"time_budget_s": args.time_budget_s, "mem_budget_mib": args.mem_budget_mib}
    for T in lengths:  # T outer: what a ratio compares was measured close together in time
        for pass_, entries in passes(fused):
            keep, case_results = [], []
            for e in entries:
                r = {**e, "pass": pass_, "T": T}
                reason = predicted_over_budget(results, r, args.time_budget_s, args.mem_budget_mib)
                (case_results.append({**r, "skipped": reason}) if reason else keep.append(e))
            if keep:
                case = {"pass": pass_, "T": T, "entries": keep, **({"ref_T": lengths[0]} if T > lengths[0] else {})}
                got = run_budgeted(args.threads, run_group, ({**base, "cases": [case]},), mmap_all=False,
                                   time_budget_s=args.time_budget_s * len(keep), mem_budget_mib=args.mem_budget_mib)
                timed_results = got if isinstance(got, list) else [{**e, "pass": pass_, "T": T, **got} for e in keep]
                for r in timed_results:
                    if "skipped" not in r:
                        mem = run_budgeted(args.threads, run_group, ({**base, "memory": True, "cases": [
                            {"pass": pass_, "T": T, "entries": [{"model": r["model"], "impl": r["impl"]}]}]},),
                            mmap_all=True, **budgets)
                        if isinstance(mem, list):
                            r["peak_mib"] = mem[0]["peak_mib"]
                        else:
                            r["note"] = f"memory not measured: {mem['skipped']}"
                    case_results.append(r)
            for r in sorted(case_results, key=lambda r: entries.index({"model": r["model"], "impl": r["impl"]})):
                _print_progress(r)
                results.append(r)
    return results


def _label(r: dict) -> str:
    name = "RWKV-5" if r["model"] == "rwkv" else "BERT (SDPA)"
    return f"{name} {r['impl']}" if r["model"] == "rwkv" else name


def _print_progress(r: dict) -> None:
    what = f"skipped: {r['skipped']}" if "skipped" in r else \
        f"{r['tok_s']:.0f} tok/s ({r['tok_s_wall']:.0f} wall), peak {r['peak_mib']:.0f} MiB"
    print(f"  {_label(r)} {r['pass']} T={r['T']}: {what}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ tables

def _get(results: list[dict], model: str, impl: str, pass_: str, T: int) -> dict | None:
    for r in results:
        if (r["model"], r["impl"], r["pass"], r["T"]) == (model, impl, pass_, T) and "sec" in r:
            return r
    return None


def _ratio(a: dict | None, b: dict | None, key: str = "tok_s") -> float | None:
    if not a or not b or not b[key] or math.isnan(a[key]) or math.isnan(b[key]):
        return None
    return a[key] / b[key]


def _fmt(x: float | None, spec: str = ".2f", suffix: str = "x") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def case_table(results: list[dict]) -> str:
    lines = ["| model | WKV / attention | pass | T | tokens/s | tokens/s (wall) | s per call (wall) | CPU s per call | "
             "calls timed | peak MiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: (r["model"] != "rwkv", r["impl"], PASSES.index(r["pass"]), r["T"])):
        name = "RWKV-5" if r["model"] == "rwkv" else "BERT"
        if "skipped" in r:
            lines.append(f"| {name} | {r['impl']} | {r['pass']} | {r['T']} | skipped: {r['skipped']} | | | | | |")
        else:
            mib = lambda x: "-" if math.isnan(x) else f"{x:.0f}"  # noqa: E731
            lines.append(f"| {name} | {r['impl']} | {r['pass']} | {r['T']} | {r['tok_s']:.0f} | {r['tok_s_wall']:.0f} | "
                         f"{r['sec']:.2f} | {r['cpu_sec']:.2f} | {r['calls']} | {mib(r.get('peak_mib', math.nan))} |"
                         + (f" {r['note']}" if "note" in r else ""))
    return "\n".join(lines)


def vs_shortest(results: list[dict], impl: str, pass_: str, T: int, t0: int) -> float | None:
    """RWKV tokens/s at T over T0's: against the paired T0 calls run around it when there are."""
    r = _get(results, "rwkv", impl, pass_, T)
    if r and "ref_tok_s" in r:
        return r["tok_s"] / r["ref_tok_s"]
    return _ratio(r, _get(results, "rwkv", impl, pass_, t0))


def ratio_table(results: list[dict], lengths: list[int], fused: bool) -> str:
    t0 = lengths[0]
    head = ["T", "RWKV / BERT fwd", "RWKV / BERT fwd+bwd", f"RWKV fwd vs T={t0}", f"RWKV fwd+bwd vs T={t0}",
            f"RWKV gc fwd+bwd vs T={t0}", "gc slowdown (fwd+bwd / gc)", "gc peak vs previous T"]
    if fused:
        head += ["fused / chunked fwd", "fused / chunked fwd+bwd"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    prev = None
    for T in lengths:
        g = lambda impl, p, t=T, m="rwkv": _get(results, m, impl, p, t)  # noqa: E731
        gc_mem = _ratio(g("chunked", "fwd+bwd gc"), _get(results, "rwkv", "chunked", "fwd+bwd gc", prev), "peak_mib") \
            if prev else None
        cells = [str(T), _fmt(_ratio(g("chunked", "fwd"), g("sdpa", "fwd", m="bert"))),
                 _fmt(_ratio(g("chunked", "fwd+bwd"), g("sdpa", "fwd+bwd", m="bert"))),
                 *(_fmt(vs_shortest(results, "chunked", p, T, t0)) for p in PASSES),
                 _fmt(_ratio(g("chunked", "fwd+bwd"), g("chunked", "fwd+bwd gc"))),
                 f"{_fmt(gc_mem)} (length {T // prev}x)" if gc_mem else "-"]
        if fused:
            cells += [_fmt(_ratio(g("fused", "fwd"), g("chunked", "fwd"))),
                      _fmt(_ratio(g("fused", "fwd+bwd"), g("chunked", "fwd+bwd")))]
        lines.append("| " + " | ".join(cells) + " |")
        prev = T
    return "\n".join(lines)


def crossover(results: list[dict], lengths: list[int]) -> str:
    """Where RWKV's forward tokens/s overtakes the transformer's (log-log interpolation)."""
    pts = [(T, _ratio(_get(results, "rwkv", "chunked", "fwd", T), _get(results, "bert", "sdpa", "fwd", T)))
           for T in lengths]
    pts = [(T, r) for T, r in pts if r is not None]
    if not pts:
        return "crossover: not measured (a model was skipped at every length)"
    if pts[0][1] >= 1:
        return f"crossover: RWKV-5 is already faster at the shortest length measured (T = {pts[0][0]}, {pts[0][1]:.2f}x)"
    for (ta, ra), (tb, rb) in zip(pts, pts[1:]):
        if ra < 1 <= rb:
            t = math.exp(math.log(ta) + (math.log(tb) - math.log(ta)) * -math.log(ra) / (math.log(rb) - math.log(ra)))
            return (f"crossover: RWKV-5's forward overtakes the transformer's at about T = {t:,.0f} tokens "
                    f"({ra:.2f}x at {ta}, {rb:.2f}x at {tb}; log-log interpolation)")
    return f"crossover: not reached up to T = {pts[-1][0]} ({pts[-1][1]:.2f}x there)"


def targets(results: list[dict], lengths: list[int]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the contract's targets, where the lengths they name were run."""
    out = []
    t0, tmax = lengths[0], lengths[-1]
    for pass_ in ("fwd+bwd", "fwd+bwd gc"):
        hi = _get(results, "rwkv", "chunked", pass_, tmax)
        r = vs_shortest(results, "chunked", pass_, tmax, t0) if tmax != t0 else None
        name = f"RWKV-5 {pass_} tokens/s at T={tmax} >= 0.85x T={t0}"
        if r is None:
            why = "one length only" if tmax == t0 else "skipped at one of the lengths"
            out.append((name, f"n/a ({why})", "-"))
        else:
            lo = hi["ref_tok_s"] if "ref_tok_s" in hi else _get(results, "rwkv", "chunked", pass_, t0)["tok_s"]
            paired = " (T0 paired in the same process)" if "ref_tok_s" in hi else ""
            out.append((name, f"{hi['tok_s']:.0f} / {lo:.0f} = {r:.2f}x{paired}", "met" if r >= 0.85 else "NOT met"))
    t_prev = tmax // 4
    lo, hi = _get(results, "rwkv", "chunked", "fwd+bwd gc", t_prev), _get(results, "rwkv", "chunked", "fwd+bwd gc", tmax)
    name = f"RWKV-5 gc peak memory at T={tmax} <= 4.4x T={t_prev}"
    if _ratio(hi, lo, "peak_mib") is not None:
        r = hi["peak_mib"] / lo["peak_mib"]
        out.append((name, f"{hi['peak_mib']:.0f} / {lo['peak_mib']:.0f} MiB = {r:.2f}x", "met" if r <= 4.4 else "NOT met"))
    else:
        out.append((name, f"n/a (T={t_prev} and T={tmax} not both measured)", "-"))
    rw, bt = _get(results, "rwkv", "chunked", "fwd", 8192), _get(results, "bert", "sdpa", "fwd", 8192)
    name = "RWKV-5 forward tokens/s >= 3x the transformer's at T=8192"
    if rw and bt:
        r = rw["tok_s"] / bt["tok_s"]
        out.append((name, f"{rw['tok_s']:.0f} / {bt['tok_s']:.0f} = {r:.2f}x", "met" if r >= 3 else "NOT met"))
    else:
        out.append((name, "n/a (T=8192 not measured for both)", "-"))
    return out


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({(r["model"], r["impl"], r["pass"]) for r in results}, key=lambda k: (k[0] != "rwkv", k[1], k[2]))
    for key in keys:
        pts = sorted((r["T"], r["tok_s"], r["peak_mib"]) for r in results
                     if (r["model"], r["impl"], r["pass"]) == key and "sec" in r)
        if not pts:
            continue
        T, tok, mem = zip(*pts)
        label = f"{'RWKV-5 ' + key[1] if key[0] == 'rwkv' else 'BERT SDPA'} {key[2]}"
        style = "-" if key[0] == "rwkv" else "--"
        ax1.plot(T, tok, style, marker="o", label=label)
        ax2.plot(T, [max(m, 1e-3) for m in mem], style, marker="o", label=label)
    lengths = sorted({r["T"] for r in results})
    for ax, ylabel in ((ax1, "tokens / s"), (ax2, "peak memory increase (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (batch 1)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace, results: list[dict], fused: bool, load_before: str, load_after: str,
           wall_s: float, png: Path) -> str:
    import torch
    import transformers

    lengths = sorted(args.lengths)
    L, C, N = args.shape
    where = f"CUDA ({torch.cuda.get_device_name()})" if args.device == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}), {args.threads} torch thread(s)"
    tgt = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in targets(results, lengths))
    return f"""# Long-context cost: RWKV-5 vs a transformer (`bench/bench_long_context.py`)

`python bench/bench_long_context.py {' '.join(args.argv)}`

- models: {L} layers x {C} wide, heads of {N}, FFN {int(C * 3.5) // 32 * 32}, vocab {VOCAB}, random
  weights, batch 1, {args.dtype}; RWKV-5 = `cross_encoder.rwkv5` (WKV: chunked{', fused' if fused else ''}),
  BERT = HF `transformers` {transformers.__version__} BertModel, SDPA attention, no dropout; embeddings
  frozen in both, everything else trainable, loss mean(hidden^2); "gc" = gradient checkpointing per block
- device: {where}; torch {torch.__version__}
- timing: {"one process per model, its cases in turn" if args.device == "cuda" else
           "one fresh process per (T, pass) with glibc's default allocator (as users run), the RWKV-5 and "
           "transformer calls interleaved so their ratio compares calls that saw the same machine load; every RWKV "
           f"case also times T = {min(args.lengths)} just before and after in the same process (the paired reference of "
           f"'vs T={min(args.lengths)}'); warm-up at T <= {WARMUP_T}"}
- peak = {"torch.cuda.max_memory_allocated minus the allocation before the case" if args.device == "cuda" else
          "the memory one call needs: peak RSS minus RSS before it, in another fresh process with every block "
          ">= 64 KiB mmap'd so that freed memory leaves RSS at once (with glibc's defaults freed blocks stay "
          "mapped, and RSS can be several times what was live)"}
- tokens/s = T / {"wall" if args.device == "cuda" else "CPU"} seconds per call{"" if args.device == "cuda" else
  " (one thread, so CPU time is what a case costs on its own on the shared cores; the wall-clock rate is shown too)"};
  every ratio below uses it; median of up to {args.reps} calls after a warm-up, fewer once {args.max_timed_s:.0f} s were timed;
  budgets per case: {args.time_budget_s:.0f} s{'' if args.device == 'cuda' else f', {args.mem_budget_mib:.0f} MiB RSS'}
- machine load: before {load_before}; after {load_after}; whole run {wall_s / 60:.1f} min

## Every case

{case_table(results)}

## Ratios (same run)

{ratio_table(results, lengths, fused)}

{crossover(results, lengths)}.

## Targets (set for CPU, 1 thread, 6 x 512, T = 512 .. 32768)

| target | measured | verdict |
|---|---|---|
{tgt}

![tokens/s and peak memory against T]({png.name})
"""


def parse_shape(text: str) -> tuple[int, int]:
    try:
        layers, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must be LAYERSxWIDTH like 6x512, got {text!r}") from None
    return layers, width


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,2048,8192,32768",
                   type=lambda s: [int(x) for x in s.split(",") if x], help="comma-separated sequence lengths")
    p.add_argument("--shape", default="6x512", type=parse_shape, help="LAYERSxWIDTH of both models (heads of --head-size)")
    p.add_argument("--head-size", type=int, default=64, help="head width of both models")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="weights and activations (auto: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per case on CPU (1 gives stable numbers on shared cores)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per case at most (median)")
    p.add_argument("--max-timed-s", type=float, default=60.0, help="stop repeating a case once this much was timed")
    p.add_argument("--time-budget-s", type=float, default=600.0,
                   help="a case predicted (or seen) to need longer is skipped (CUDA: per case, enforced per model)")
    p.add_argument("--mem-budget-mib", type=float, default=8192.0, help="CPU: RSS budget of a case's process")
    p.add_argument("--no-fused", action="store_true", help="CUDA: leave out the fused WKV kernel even when installed")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("results_long_context.md"),
                   help="markdown results file; the PNG goes beside it with the same stem")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.shape = (*args.shape, args.head_size)
    if args.shape[1] % args.head_size:
        p.error(f"width {args.shape[1]} is not a multiple of --head-size {args.head_size}")
    if not args.lengths or min(args.lengths) < 1:
        p.error("--lengths needs positive integers")
    if args.dtype == "auto":
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    import torch

    fused = False
    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda but CUDA is not available")
        from cross_encoder.rwkv5 import fused_available

        fused = fused_available("cuda") and not args.no_fused
        if not fused and not args.no_fused:
            print("note: flash-linear-attention is not importable: the fused WKV kernel is not measured", file=sys.stderr)
    measure.PRELOAD += ["cross_encoder.rwkv5", "transformers.models.bert.modeling_bert"]
    # A plain `kill` of the benchmark raises here, so the case running in its process is killed too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before, t0 = machine_load(), time.perf_counter()
    results = measure_all(args, args.shape, fused)
    load_after, wall = machine_load(), time.perf_counter() - t0
    lengths = sorted(args.lengths)
    print(case_table(results), "", ratio_table(results, lengths, fused), "", crossover(results, lengths), "", sep="\n")
    for a, b, c in targets(results, lengths):
        print(f"{c:8s} {a}: {b}")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(results, png, f"{args.shape[0]} x {args.shape[1]}, {args.device}, {args.dtype}, batch 1")
    with atomic_file(out, "w") as fh:
        fh.write(report(args, results, fused, load_before, load_after, wall, png))
    print(f"\nwrote {out} and {png}")
    return results


if __name__ == "__main__":
    main()
