"""The one-command demo: the whole product on the bundled sample, on CPU, in minutes.

    python demo.py [--out demo_out] [--quick] [--seed 0]

1. split `data/nq_sample.jsonl.zst` by line into a training part and a held-out part (seeded);
2. stage 0 -> 1 -> 2 on the training part;
3. write a tiny *random* RWKV-5 checkpoint (real weights cannot be downloaded here);
4. train a LoRA cross-encoder on it for a few minutes;
5. evaluate it against BM25 on the held-out records;
6. the long-context leg: the same pipeline on multi-document windows (stage 0 `--mode window`,
   ~1024-token windows with length-matched negatives), a LoRA trained on them, and the window
   evaluation (find the gold window among a few of the same length).

Every step runs the real command-line script in a subprocess and prints the command first, so
what the user sees is exactly what they would type for a real run. A random tiny model trained
for minutes is a smoke run of the machinery, not a reranker: expect BM25 to win.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from cross_encoder.modeling.adapter_dirs import BEST_NAME, CE_CONFIG_NAME, CHECKPOINT_RE, FINAL_NAME, find_adapter
from cross_encoder.training.outputs.log import read_metrics
from cross_encoder.training.outputs.run_dir import CONFIG_NAME, METRICS_NAME, PLOT_NAME, check_output_dir
from long_ctx.common.atomic import atomic_file, write_json
from long_ctx.common.cli import UsageError
from long_ctx.common.line_reader import iter_lines

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "nq_sample.jsonl.zst"
SEP, CLS, PAD = 2, 1, 0


@dataclass(frozen=True)
class DemoSize:
    held_out_fraction: float  # of the sample's lines
    train_lines: int | None  # cap on training lines (None: all of the training part)
    held_out_lines: int | None
    num_negatives: int
    negative_strategy: str  # stage 0's --negative_strategy
    n_layer: int
    n_embd: int
    head_size: int
    max_steps: int
    bs: int
    lora_r: int
    eval_every: int
    max_docs: int | None  # evaluation pools cut to this many documents
    # The long-context leg (stage 0 --mode window); its own, smaller random model: rows are ~1024
    # tokens, so the passage leg's model would take minutes.
    window_tokens: int
    window_negatives: int
    window_steps: int
    window_bs: int
    window_n_layer: int
    window_n_embd: int
    window_eval_lines: int  # held-out lines read by the window evaluation
    window_num_windows: int


SIZES = {
    # ~2.5 minutes on 2 idle CPU cores (measured 124 s before the window leg, which took 38 s alone
    # on loaded cores), most of it training. Settings chosen by
    # measurement (README, "The demo"):
    # 7 'least' negatives per question (groups of 8 rows, two per batch of 16, grouped softmax) beat
    # 3, and 'hardest' negatives made this random model worse (it overfits near-misses it cannot
    # tell apart); 600 steps beat 200 and 1200 (which overfits). BM25 still wins.
    "full": DemoSize(held_out_fraction=0.2, train_lines=None, held_out_lines=None, num_negatives=7,
                     negative_strategy="least", n_layer=2, n_embd=128, head_size=32, max_steps=600, bs=16,
                     lora_r=16, eval_every=200, max_docs=None, window_tokens=1024, window_negatives=3,
                     window_steps=6, window_bs=8, window_n_layer=1, window_n_embd=64, window_eval_lines=20,
                     window_num_windows=4),
    # CI: every step runs, on a handful of records, in well under a minute.
    "quick": DemoSize(held_out_fraction=0.2, train_lines=16, held_out_lines=4, num_negatives=1,
                      negative_strategy="least", n_layer=1,
                      n_embd=32, head_size=16, max_steps=3, bs=4, lora_r=4, eval_every=0, max_docs=None,
                      window_tokens=1024, window_negatives=1, window_steps=2, window_bs=4, window_n_layer=1,
                      window_n_embd=32, window_eval_lines=4, window_num_windows=3),
}


@dataclass
class DemoConfig:
    out: str = "demo_out"
    quick: bool = False
    seed: int = 0
    sample: str = str(SAMPLE)
    python: str = sys.executable

    @property
    def size(self) -> DemoSize:
        return SIZES["quick" if self.quick else "full"]


class DemoError(RuntimeError):
    pass


def split_sample(sample: str | Path, train_path: Path, held_out_path: Path, size: DemoSize,
                 seed: int) -> tuple[int, int]:
    """Split the sample's lines into training and held-out files (seeded, input order kept)."""
    lines = [line for _, line in iter_lines(sample)]
    if len(lines) < 2:
        raise DemoError(f"{sample} has {len(lines)} line(s); the demo needs at least 2")
    n_held = min(len(lines) - 1, max(1, round(len(lines) * size.held_out_fraction)))
    held = set(np.random.default_rng(seed).permutation(len(lines))[:n_held].tolist())
    train = [ln for i, ln in enumerate(lines) if i not in held][:size.train_lines]
    held_out = [ln for i, ln in enumerate(lines) if i in held][:size.held_out_lines]
    for path, part in ((train_path, train), (held_out_path, held_out)):
        with atomic_file(path, "wb") as fh:
            fh.write(b"".join(ln + b"\n" for ln in part))
    return len(train), len(held_out)


def choose_max_length(stage1_dir: Path, multiple: int = 32) -> int:
    """Smallest multiple of `multiple` holding the longest question + longest document + SEP + CLS
    of the training data, so no training row is cut (stage 1's stats.json has the lengths)."""
    lengths = orjson.loads((stage1_dir / "stats.json").read_bytes())["token_lengths"]
    longest_doc = max(lengths[k]["max"] for k in ("positive", "negative", "negatives") if k in lengths)
    need = lengths["question"]["max"] + longest_doc + 2
    return int(math.ceil(need / multiple) * multiple)


def clear_training_output(path: Path, ds_dir: Path) -> None:
    """Remove a previous demo run's training output from `path`: the trainer (rightly) refuses to
    start over checkpoints of another run, and each demo run trains a new random model. Only what
    the trainer itself recognises as its own (`training.run_dir`) is removed; anything else makes
    the demo stop with an error, and other files in the folder are left alone."""
    if not path.exists():
        return
    try:
        check_output_dir(path, ds_dir)
    except UsageError as exc:
        raise DemoError(f"{exc} (the demo only clears its own training output)") from None
    own = [p for p in path.iterdir() if p.name in (CONFIG_NAME, METRICS_NAME, PLOT_NAME, FINAL_NAME, BEST_NAME)
           or CHECKPOINT_RE.match(p.name)]
    if own:
        print(f"\nremoving the previous run's training output in {path}", flush=True)
    for p in own:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _show(path: Path) -> str:
    """A path as the command line shows it: relative to the repo root (where commands run) when inside."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path.resolve())


class _Runner:
    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.steps: list[dict[str, Any]] = []

    def run(self, title: str, args: list[Any]) -> None:
        cmd = [self.config.python, *map(str, args)]
        shown = "python " + " ".join(shlex.quote(str(a)) for a in args)
        print(f"\n=== {len(self.steps) + 1}. {title}\n$ {shown}", flush=True)
        start = time.perf_counter()
        # cwd = repo root: the scripts' relative paths are the ones printed above.
        proc = subprocess.run(cmd, cwd=REPO)
        seconds = time.perf_counter() - start
        self.steps.append({"step": title, "command": shown, "seconds": round(seconds, 2)})
        if proc.returncode != 0:
            raise DemoError(f"step '{title}' failed with exit code {proc.returncode}; its output is above. "
                            f"Re-run it alone with:\n  cd {REPO} && {shown}")


def _tokens_and_rows(runner: _Runner, label: str, qpn: Path, stage1: Path, stage2: Path) -> int:
    """Stages 1 and 2 on a stage-0 output; returns the max_length chosen for stage 2."""
    runner.run(f"{label}stage 1: RWKV World token ids (parquet dataset)", [
        "long_ctx/1_create_datasets.py", "--input_file", _show(qpn), "--output_dir", _show(stage1),
        "--num_proc", 2, "--overwrite"])
    max_length = choose_max_length(stage1)
    print(f"\nmax_length {max_length}: the longest question + document of the training data fits, "
          "so no row is truncated", flush=True)
    runner.run(f"{label}stage 2: padded rows question [SEP] document [CLS]", [
        "long_ctx/2_create_padded_data.py", "--ds_dir", _show(stage1), "--max_length", max_length,
        "--sep_token_id", SEP, "--cls_token_id", CLS, "--pad_token_id", PAD, "--output_dir", _show(stage2),
        "--overwrite"])
    return max_length


def _random_model(runner: _Runner, title: str, path: Path, n_layer: int, n_embd: int, head_size: int,
                  seed: int) -> None:
    runner.run(title, [
        "-c", "from cross_encoder.rwkv5 import write_random_checkpoint; "
              f"write_random_checkpoint({_show(path)!r}, n_layer={n_layer}, n_embd={n_embd}, "
              f"head_size={head_size}, seed={seed})"])


def best_checkpoint(train: Path) -> dict[str, Any] | None:
    """What `--adapter OUT` uses when the run kept a best/ (its step, metric and value), printed
    with the steps that were evaluated; None when the run kept none (then final/ is used)."""
    # The evaluator's own resolution, so the line names the folder it really loads.
    found = find_adapter(train, need_state=False, prefer_best=True)
    if found is None or found.path.name != BEST_NAME:
        used = _show(found.path) if found is not None else "nothing"
        print(f"\n{_show(train)} has no intact best/ (nothing was evaluated, or it is damaged): --adapter "
              f"{_show(train)} uses {used}", flush=True)
        return None
    info = orjson.loads((found.path / CE_CONFIG_NAME).read_bytes())["best"]
    evaluated = [r["step"] for r in read_metrics(train / METRICS_NAME) if info["metric"] in r]
    print(f"\n--adapter {_show(train)} uses {_show(train / BEST_NAME)}: step {info['step']}, the best {info['metric']} "
          f"({info['value']:.4f}, {'higher' if info['greater_is_better'] else 'lower'} is better) of the "
          f"evaluations at steps {', '.join(map(str, evaluated))}", flush=True)
    return info


def _metrics(res: dict[str, Any]) -> dict[str, Any]:
    return {s: {k: v for k, v in res[s].items() if not isinstance(v, dict)} for s in ("cross_encoder", "bm25")}


def _window_leg(runner: _Runner, config: DemoConfig, out: Path, data: Path) -> dict[str, Any]:
    """Stages 0-2, training and evaluation again, on multi-document windows of ~window_tokens."""
    size, t = config.size, config.size.window_tokens
    base = out / "window"
    qpn, stage1, stage2, train = base / "stage0" / "win.jsonl", base / "stage1", base / "stage2", base / "train"
    model_file = out / "model" / "tiny-rwkv5-random-window.pth"
    results, plot = base / "eval" / "results.json", base / "eval" / "results.png"
    runner.run(f"long context: stage 0 --mode window ({t}-token windows of whole documents, negatives of the "
               "positive's length)", [
        "long_ctx/0_create_q_p_n.py", "--input_file", _show(data / "train.jsonl"), "--output_file", _show(qpn),
        "--mode", "window", "--context_tokens", t, "--num_negatives", size.window_negatives, "--num_splits", 2])
    max_length = _tokens_and_rows(runner, "long context: ", qpn, stage1, stage2)
    _random_model(runner, "long context: a smaller tiny random RWKV-5 (rows are ~1000 tokens long)", model_file,
                  size.window_n_layer, size.window_n_embd, 16, config.seed)
    clear_training_output(train, stage2)
    runner.run("long context: LoRA training on window rows", [
        "cross_encoder/1_peft_training_ce.py", "--model_file", _show(model_file), "--ds_dir", _show(stage2),
        "--output_dir", _show(train), "--ctx_len", max_length, "--bs", size.window_bs,
        "--max_steps", size.window_steps, "--lr", "3e-3", "--lora_r", 8, "--lora_alpha", 16, "--lora_dropout", 0.0,
        "--loss", "grouped", "--group_by_length", "--eval_fraction", 0.0, "--save_every", 0, "--log_every", 1,
        "--device", "cpu", "--seed", config.seed])
    runner.run("long context: find the gold window among windows of the same length, cross-encoder vs BM25", [
        "cross_encoder/2_evaluate_ce.py", "--mode", "window", "--context_tokens", t,
        "--num_windows", size.window_num_windows, "--model_file", _show(model_file), "--adapter", _show(train / "final"),
        "--input_file", _show(data / "held_out.jsonl"), "--limit", size.window_eval_lines,
        "--output_json", _show(results), "--output_plot", _show(plot), "--device", "cpu"])
    return {"context_tokens": t, "max_length": max_length, "results_json": str(results),
            "plots": {"stage 1 token lengths": str(stage1 / "token_lengths.png"),
                      "training loss": str(train / "loss.png"), "window evaluation": str(plot)}}


def main(config: DemoConfig) -> dict[str, Any]:
    """Run the demo; returns (and writes to OUT/demo_summary.json) the steps, metrics and plot paths."""
    start = time.perf_counter()
    size = config.size
    out = Path(config.out).resolve()
    if not Path(config.sample).is_file():
        raise DemoError(f"sample {config.sample} not found; run the demo from a full clone of the repository")
    data, model_file = out / "data", out / "model" / "tiny-rwkv5-random.pth"
    qpn, stage1, stage2, train = out / "stage0" / "qpn.jsonl", out / "stage1", out / "stage2", out / "train"
    results, plot = out / "eval" / "results.json", out / "eval" / "results.png"
    runner = _Runner(config)
    mode = "quick (CI size)" if config.quick else "full"
    print(f"demo ({mode}, seed {config.seed}) -> {out}\n"
          "NOTE: the model is a tiny RANDOM RWKV-5 trained briefly on CPU: a smoke run of the whole "
          "pipeline, not a useful reranker.", flush=True)

    n_train, n_held = split_sample(config.sample, data / "train.jsonl", data / "held_out.jsonl", size, config.seed)
    print(f"\n=== 0. split {_show(Path(config.sample))} by line (seed {config.seed}): "
          f"{n_train} training lines -> {_show(data / 'train.jsonl')}, "
          f"{n_held} held-out lines -> {_show(data / 'held_out.jsonl')}", flush=True)

    runner.run("stage 0: BM25 query / positive / negatives", [
        "long_ctx/0_create_q_p_n.py", "--input_file", _show(data / "train.jsonl"), "--output_file", _show(qpn),
        "--num_splits", 2, "--num_negatives", size.num_negatives,
        "--negative_strategy", size.negative_strategy])
    max_length = _tokens_and_rows(runner, "", qpn, stage1, stage2)
    _random_model(runner, "a tiny random RWKV-5 checkpoint (stands in for RWKV-5-World-0.4B)", model_file,
                  size.n_layer, size.n_embd, size.head_size, config.seed)
    clear_training_output(train, stage2)
    runner.run("LoRA training on CPU", [
        "cross_encoder/1_peft_training_ce.py", "--model_file", _show(model_file), "--ds_dir", _show(stage2),
        "--output_dir", _show(train), "--ctx_len", max_length, "--bs", size.bs, "--max_steps", size.max_steps,
        "--lr", "3e-3", "--warmup_steps", max(1, size.max_steps // 10), "--lora_r", size.lora_r,
        "--lora_alpha", 2 * size.lora_r, "--lora_dropout", 0.0, "--loss", "grouped", "--group_by_length",
        "--eval_fraction", 0.1, "--eval_every", size.eval_every, "--save_every", 0, "--log_every", 5,
        "--device", "cpu", "--seed", config.seed])
    best = best_checkpoint(train)
    eval_args = ["cross_encoder/2_evaluate_ce.py", "--model_file", _show(model_file),
                 "--adapter", _show(train), "--input_file", _show(data / "held_out.jsonl"),
                 "--output_json", _show(results), "--output_plot", _show(plot), "--device", "cpu"]
    if size.max_docs:
        eval_args += ["--max_docs", size.max_docs]
    runner.run("evaluation on the held-out records, cross-encoder vs BM25", eval_args)

    window = _window_leg(runner, config, out, data)

    from cross_encoder.evaluation.report import format_table
    from cross_encoder.evaluation.windows import format_window_table

    res = orjson.loads(results.read_bytes())
    wres = orjson.loads(Path(window["results_json"]).read_bytes())
    plots = {"stage 1 token lengths": stage1 / "token_lengths.png", "stage 2 row lengths": stage2 / "row_lengths.png",
             "training loss": train / "loss.png", "evaluation (cross-encoder vs BM25)": plot,
             **{f"long context: {k}": Path(v) for k, v in window.pop("plots").items()}}
    summary = {
        "mode": mode, "seed": config.seed, "out": str(out), "max_length": max_length,
        "train_lines": n_train, "held_out_lines": n_held, "steps": runner.steps,
        "metrics": _metrics(res), "results_json": str(results), "best": best,
        "window": {**window, "metrics": _metrics(wres)},
        "plots": {k: str(v) for k, v in plots.items()},
        "elapsed_s": round(time.perf_counter() - start, 1), "config": dataclasses.asdict(config),
    }
    write_json(out / "demo_summary.json", summary)
    print("\n" + "=" * 72 + "\n" + format_table(res, breakdowns=False))
    print("\nlong context: " + format_window_table(wres))
    print("\nplots:")
    for name, p in plots.items():
        print(f"  {name:36s} {p}{'' if p.is_file() else '  (missing)'}")
    print(f"summary: {out / 'demo_summary.json'}  ({summary['elapsed_s']:.0f} s in all)")
    print("\nThis was a SMOKE RUN: a tiny random RWKV-5 trained for a few minutes on CPU cannot rank well, so "
          "BM25 winning is expected.\nFor a real reranker, see the README: the full NQ file, RWKV-5 World 0.4B, "
          "a GPU and torchrun.")
    return summary
