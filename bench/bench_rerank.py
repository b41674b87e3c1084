"""Benchmark cross-encoder reranking on CPU: prefix-state reuse vs naive per-pair scoring, same run.

Pools are the bundled sample's NQ questions with their documents (first `--max_docs` of each).
The model is a random RWKV-5 + score head (scoring speed does not depend on the weights; a
merged LoRA adds nothing at inference). Three ways to score the same pairs:

  * per-pair, batch 1 (the reference): every `question [SEP] document [CLS]` row on its own;
  * per-pair, batched: full rows `--batch_size` at a time in input order, trimmed to the longest;
  * state reuse (what `Reranker.score` does): `question [SEP]` once, then every document continues
    from a copy of its state, length-sorted batches of `--batch_size`;
  * the same with the documents of all queries sharing batches (`Reranker.score_many`, what the
    evaluator and the rerank CLI do, 16 queries at a time by default).

Two query regimes: the sample's real questions (~10 tokens, where documents dominate) and long
queries (the question followed by its long answer, repeated to `--long_query_tokens` tokens),
where re-reading the query per document is most of the work. Prints a markdown table with
documents/s, tokens run through the model, the speed-up over the reference and the largest
score difference from it.

    python bench/bench_rerank.py [--questions 6] [--max_docs 60] [--batch_size 32] [--threads 2]
"""
import argparse
import time

import numpy as np
import torch

from cross_encoder.modeling import CrossEncoder
from cross_encoder.rwkv5 import make_config, random_rwkv5
from cross_encoder.serving.reranker import Reranker
from long_ctx.common.line_reader import iter_lines
from long_ctx.stage0.nq_format import parse_line
from long_ctx.world_tokenizer import get_tokenizer

SAMPLE = "data/nq_sample.jsonl.zst"
MODELS = {"tiny (2 x 128)": (2, 128, 32), "small (6 x 512)": (6, 512, 64)}


def load_pools(n: int, max_docs: int, long_query_tokens: int) -> dict[str, list[tuple[list[int], list[list[int]]]]]:
    tok = get_tokenizer()
    short, long_ = [], []
    for _, line in iter_lines(SAMPLE):
        rec = parse_line(line)
        docs = tok.encode_batch(rec.documents[:max_docs])
        q = tok.encode(rec.question)
        short.append((q, docs))
        filler = tok.encode(" " + rec.long_answer)
        lq = list(q)
        while len(lq) < long_query_tokens:
            lq += filler
        long_.append((lq[:long_query_tokens], docs))
        if len(short) == n:
            break
    return {"NQ questions": short, f"{long_query_tokens}-token queries": long_}


class TokenCounter:
    """Counts the token positions (padding included) every forward pass of the trunk processes."""

    def __init__(self, rwkv) -> None:
        self.rwkv, self.inner, self.tokens = rwkv, rwkv.hidden, 0
        rwkv.hidden = self

    def __call__(self, input_ids, *args, **kw):
        self.tokens += input_ids.numel()
        return self.inner(input_ids, *args, **kw)


def timed(fn, pools, counter: TokenCounter) -> tuple[float, list[np.ndarray], int]:
    """fn(pools) -> scores per pool; returns (seconds, scores, tokens processed)."""
    counter.tokens = 0
    start = time.perf_counter()
    out = fn(pools)
    return time.perf_counter() - start, out, counter.tokens


def per_pool(fn):
    return lambda pools: [fn(q, docs) for q, docs in pools]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=6, help="questions (pools) from the sample")
    p.add_argument("--max_docs", type=int, default=60, help="documents per pool at most")
    p.add_argument("--batch_size", type=int, default=32, help="documents per forward pass (batched methods)")
    p.add_argument("--long_query_tokens", type=int, default=256, help="query length of the long-query regime")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="model shapes to run")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    regimes = load_pools(a.questions, a.max_docs, a.long_query_tokens)
    ce_config = {"sep_token_id": 2, "cls_token_id": 1, "pad_token_id": 0, "max_length": 1024}

    print(f"CPU, {a.threads} thread(s), torch {torch.__version__}; {a.questions} questions, <= {a.max_docs} "
          f"documents each, batch {a.batch_size}\n")
    print("| model | queries | method | docs | tokens processed (incl. padding) | docs/s | speed-up | max abs score diff |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in a.models:
        n_layer, n_embd, head = MODELS[name]
        rwkv = random_rwkv5(make_config(n_layer, n_embd, head), seed=0, with_head=False)
        rr = Reranker(CrossEncoder(rwkv, head_seed=0), ce_config, batch_size=a.batch_size)
        counter = TokenCounter(rwkv)
        for regime, pools in regimes.items():
            n_docs = sum(len(d) for _, d in pools)
            rr.score_ids(*pools[0])  # warm-up (first-call allocations)
            methods = [
                ("per-pair, batch 1 (reference)", per_pool(lambda q, d: rr.score_ids_per_pair(q, d, batch_size=1))),
                (f"per-pair, batch {a.batch_size}",
                 per_pool(lambda q, d: rr.score_ids_per_pair(q, d, batch_size=a.batch_size))),
                ("state reuse, one query at a time (Reranker.score)", per_pool(rr.score_ids)),
                ("state reuse, all queries batched together (score_many)", rr.score_ids_many),
            ]
            ref_s, ref = None, None
            for label, fn in methods:
                seconds, scores, tokens = timed(fn, pools, counter)
                if ref is None:
                    ref_s, ref = seconds, scores
                diff = max(float(np.abs(s - r).max()) for s, r in zip(scores, ref))
                print(f"| {name} | {regime} | {label} | {n_docs:,} | {tokens:,} | {n_docs / seconds:,.1f} | "
                      f"{ref_s / seconds:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
