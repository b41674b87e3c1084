"""Ranking metrics on raw NQ pools during training (`1_peft_training_ce.py --eval_input_file`).

At each evaluation the trainer ranks the pools of the first `--eval_pool_limit` lines of a raw
NQ file with its current weights, with the evaluator's own code (`evaluator.iter_pools`,
`score_chunk`, `question_result`, `ranking_metrics.summarize`) and its default scoring settings
(`EvalConfig`: batch sizes, question batches, document order, BM25 tokenizer), so the numbers are
those `2_evaluate_ce.py --limit N` reports for a checkpoint of that step (up to float rounding:
the evaluator merges the LoRA into the trunk, training does not).

The file is read, parsed, BM25-scored and tokenized once, when the trainer starts; an evaluation
only runs the model. Under DDP every process ranks every `world_size`-th question batch (the
batches of a single process, so the scores do not depend on the process count) and the gold
ranks are gathered. The trainer takes this class as `main(config, pool_eval=RawPoolEval)`
(training never imports evaluation; the training script passes it).
"""
from __future__ import annotations

import collections
import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from cross_encoder.evaluation.evaluator import EvalConfig, iter_pools, question_result, score_chunk
from cross_encoder.evaluation.ranking_metrics import METRIC_NAMES, summarize
from long_ctx.common.cli import UsageError
from long_ctx.common.line_reader import LineReader
from long_ctx.common.ordered_pool import chunked
from long_ctx.stage0.bm25 import bm25_scores

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
#: The logged names: the cross-encoder's (selectable by --metric_for_best_model) and BM25's.
CE_PREFIX, BM25_PREFIX = "eval_", "eval_bm25_"


class _Pretokenized:
    """The tokenizer interface the Reranker calls, answered from ids computed once."""

    def __init__(self, tokenizer: Any, questions: Sequence[str], documents: Sequence[str]) -> None:
        self.ids = dict(zip(questions, (tokenizer.encode(q) for q in questions)))
        docs = list(dict.fromkeys(documents))
        self.ids.update(zip(docs, tokenizer.encode_batch(docs)))
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self.ids[text] if text in self.ids else self.tokenizer.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


class RawPoolEval:
    """The raw pools of one training run, parsed once; `evaluate(model, gather)` ranks them."""

    @staticmethod
    def metric_names() -> list[str]:
        """The names `evaluate` logs that --metric_for_best_model may choose (BM25's never change)."""
        return [CE_PREFIX + m for m in METRIC_NAMES]

    def __init__(self, input_file: str | Path, limit: int | None, scoring_config: dict[str, Any], rank: int = 0,
                 world_size: int = 1) -> None:
        """`scoring_config`: what the Reranker reads from an adapter's config (special ids,
        max_length, row_format, pool); `limit`: lines read (None or 0: all)."""
        from long_ctx.world_tokenizer import get_tokenizer

        path = Path(input_file)
        if not path.is_file():
            raise UsageError(f"--eval_input_file {path} not found; pass a raw NQ .jsonl.zst or .jsonl (stage 0's "
                             "input, e.g. the held-out part of your data)")
        self.skipped: collections.Counter = collections.Counter()
        records = list(iter_pools(LineReader(path), limit or None, None, self.skipped))
        if not records:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "no lines"
            raise UsageError(f"--eval_input_file {path}: no usable pool in the lines read ({reasons}); pass the raw "
                             "NQ multi-document file (the input of stage 0)")
        self.n_pools, self.scoring_config = len(records), scoring_config
        chunks = list(chunked(iter(records), _DEFAULTS["question_batch"]))[rank::world_size]
        # BM25 and the token ids do not depend on the weights: computed here, once.
        tokenizer = _DEFAULTS["bm25_tokenizer"]
        self.chunks = [(c, [bm25_scores(rec.documents, rec.question, tokenizer) for _, rec in c]) for c in chunks]
        mine = [rec for c in chunks for _, rec in c]
        self.tokenizer = _Pretokenized(get_tokenizer(), [r.question for r in mine],
                                       [d for r in mine for d in r.documents])
        #: The largest token id of these pools (the model's vocabulary must hold it).
        self.max_token_id = max((max(ids, default=0) for ids in self.tokenizer.ids.values()), default=0)

    def describe(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
        return f"{self.n_pools} raw pools" + (f" (skipped: {skipped})" if skipped else "")

    def evaluate(self, model: Any, gather: Callable[[Any], list[Any]]) -> dict[str, float]:
        """Rank this process's pools with `model` (a CrossEncoder or its peft model; left in eval
        mode), gather every process's gold ranks and summarise them: `eval_pools`, `eval_<metric>`
        of the cross-encoder and `eval_bm25_<metric>` of BM25 on the same pools."""
        from cross_encoder.serving.reranker import QueryCutWarning, Reranker

        reranker = Reranker(model, self.scoring_config, batch_size=_DEFAULTS["batch_size"],
                            max_batch_tokens=_DEFAULTS["max_batch_tokens"], tokenizer=self.tokenizer)
        mine = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", QueryCutWarning)
            for chunk, bm25 in self.chunks:
                ce, _ = score_chunk(reranker, chunk, bm25, _DEFAULTS["doc_order"])
                mine += [question_result(n, rec, {"cross_encoder": s, "bm25": b})
                         for (n, rec), s, b in zip(chunk, ce, bm25)]
        results = sorted((r for part in gather(mine) for r in part), key=lambda r: r.line_number)
        out: dict[str, float] = {"eval_pools": len(results)}
        for system, prefix in (("cross_encoder", CE_PREFIX), ("bm25", BM25_PREFIX)):
            summary = summarize(r.ranks[system] for r in results)
            out.update({prefix + k: v for k, v in summary.items() if k != "n"})
        return out
