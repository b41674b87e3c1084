"""Rerank `{"query": ..., "documents": [...]}` jsonl lines with a trained cross-encoder: `main(RerankConfig)`.

Each usable input line gives one output line (same order)::

    {"line_number": 0, "id": ..., "query": "...", "scores": [s_0, ..., s_n-1], "ranking": [i_best, ...]}

`scores` follow the input document order; `ranking` lists 0-based document indices best first
(ties to the lower index); `id` is copied when the input line has one. Lines that are not such an
object are skipped, counted by reason, and never stop the run.
"""
from __future__ import annotations

import collections
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orjson

from cross_encoder.cli_flags import ScoringFlags, check_outputs, model_inputs
from long_ctx.common.atomic import atomic_file
from long_ctx.common.cli import UsageError, flag
from long_ctx.common.line_reader import LineReader
from long_ctx.common.ordered_pool import chunked
from long_ctx.common.progress import progress_bar

#: Why an input line was skipped.
SKIP_REASONS = {
    "empty_line": "the line is empty or only whitespace",
    "invalid_json": "the line is not valid JSON",
    "not_a_json_object": "the JSON value is not an object",
    "missing_query": "no string `query`",
    "missing_documents": "no list `documents`",
    "document_not_a_string": "an element of `documents` is not a string",
}


@dataclass
class RerankConfig(ScoringFlags):
    """The rerank CLI's settings; each field is also its command-line flag."""

    input_file: str = flag(None, 'jsonl (or .jsonl.zst) of {"query": str, "documents": [str, ...]} lines; an "id" is copied', required=True)
    output_file: str | None = flag(None, "output jsonl, written atomically (default: <input>.reranked.jsonl beside the input)")
    progress: bool = flag(True, "hide the progress bar", cli_name="no_progress", action="store_false")

    def out_path(self) -> Path:
        if self.output_file:
            return Path(self.output_file)
        name = Path(self.input_file).name
        for ext in (".zst", ".jsonl", ".json"):
            name = name.removesuffix(ext)
        return Path(self.input_file).with_name(f"{name}.reranked.jsonl")


class BadLine(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_query_line(line: bytes) -> dict[str, Any]:
    """The JSON object of one input line, checked; raises BadLine with a reason from SKIP_REASONS."""
    if not line.strip():
        raise BadLine("empty_line")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BadLine("invalid_json") from None
    if not isinstance(obj, dict):
        raise BadLine("not_a_json_object")
    if not isinstance(obj.get("query"), str):
        raise BadLine("missing_query")
    docs = obj.get("documents")
    if not isinstance(docs, list):
        raise BadLine("missing_documents")
    if not all(isinstance(d, str) for d in docs):
        raise BadLine("document_not_a_string")
    return obj


def iter_queries(reader: LineReader, skipped: collections.Counter) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_number, line in reader:
        try:
            yield line_number, parse_query_line(line)
        except BadLine as exc:
            skipped[exc.reason] += 1


def main(config: RerankConfig, reranker=None) -> dict[str, Any]:
    """Rerank every line; returns a summary (also printed). `reranker` skips loading the model."""
    from cross_encoder.serving.reranker import QueryCutWarning

    if config.question_batch < 1:
        raise ValueError(f"--question_batch must be >= 1, got {config.question_batch}")
    if not Path(config.input_file).is_file():
        what = "is a folder" if Path(config.input_file).is_dir() else "not found"
        raise FileNotFoundError(f"--input_file {config.input_file} {what}; pass a jsonl of "
                                '{"query": ..., "documents": [...]} lines')
    out_path = config.out_path()
    if out_path.name.endswith((".zst", ".gz")):
        raise UsageError(f"--output_file {out_path}: the output is plain jsonl, not compressed; drop the "
                         f"{out_path.suffix} ending (compress it afterwards if needed)")
    check_outputs({"--output_file": out_path}, [config.input_file, *model_inputs(config.model_file, config.adapter)])
    if reranker is None:
        from cross_encoder.serving.reranker import Reranker

        reranker = Reranker.from_flags(config)
    start = time.perf_counter()
    reader = LineReader(config.input_file)
    skipped: collections.Counter = collections.Counter()
    n_queries = n_docs = 0
    cut_before = getattr(reranker, "queries_cut", 0)
    with atomic_file(out_path, "wb") as fh, progress_bar(total=reader.input_size, unit="B", unit_scale=True,
                                                         desc="reranking", disable=not config.progress) as bar, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", QueryCutWarning)  # counted and reported below
        for chunk in chunked(iter_queries(reader, skipped), config.question_batch):
            all_scores = reranker.score_many([(obj["query"], obj["documents"]) for _, obj in chunk])
            for (line_number, obj), scores in zip(chunk, all_scores):
                ranking = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable").tolist()
                row: dict[str, Any] = {"line_number": line_number}
                if "id" in obj:
                    row["id"] = obj["id"]
                row.update(query=obj["query"], scores=scores, ranking=ranking)
                fh.write(orjson.dumps(row) + b"\n")
                n_queries += 1
                n_docs += len(scores)
            bar.update(reader.input_bytes - bar.n)
    elapsed = time.perf_counter() - start
    cut = getattr(reranker, "queries_cut", 0) - cut_before
    summary = {"queries": n_queries, "documents": n_docs, "skipped": dict(sorted(skipped.items())),
               "queries_cut": cut,
               "output_file": str(out_path), "elapsed_s": round(elapsed, 3),
               "documents_per_s": round(n_docs / elapsed, 1) if elapsed > 0 else None}
    print(f"reranked {n_queries:,} queries ({n_docs:,} documents) in {elapsed:.1f} s -> {out_path}")
    if skipped:
        print("skipped lines: " + ", ".join(f"{k} {v:,}" for k, v in summary["skipped"].items()))
    if cut:
        print(f"warning: {cut:,} queries were longer than {getattr(reranker, 'max_query_tokens', '?')} tokens "
              "(half the row) and only their first tokens were scored, so that documents keep room "
              "(docs/reranking.md)")
    return summary
