"""Stage 0's `--output_format`: the same records for our stages (native) or for other trainers.

* `native`: stage 0's jsonl (what stages 1-2 read), byte for byte as ever.
* `flag_embedding`: jsonl lines `{"query", "pos", "neg", "pos_scores", "neg_scores"}` as
  FlagEmbedding's reranker and embedder fine-tuning read them (scores = BM25 against the query; an
  easy negative of a mix, from another record's pool, was not scored and gets 0.0).
* `sentence_transformers`: a Hugging Face parquet dataset folder, columns `query, positive,
  negative_1 .. negative_K` (the n-tuple layout of sentence-transformers' `mine_hard_negatives`,
  which its CrossEncoder and SentenceTransformer trainers take), with README.md (dataset card) and
  stats.json; `--output_file` names the folder, written atomically. A record with fewer than K
  negatives has no row there (a column cannot be left empty), counted in the stats.

`encode` turns a mode's output object into what the sink writes (in the workers); the sinks run in
the main process.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import orjson
import pyarrow as pa
import zstandard

from long_ctx.common.atomic import atomic_dir, atomic_file, check_output_dir, write_json
from long_ctx.common.dataset_card import SHARD_GLOB, markdown_table, write_dataset_card
from long_ctx.common.line_reader import is_zstd_path
from long_ctx.common.parquet_shards import ShardWriter

OUTPUT_FORMATS = ("native", "flag_embedding", "sentence_transformers")
#: zstd level of a jsonl output named *.zst (fast; the main process compresses while workers parse).
ZSTD_LEVEL = 3
STATS_FILE = "stats.json"
CARD_FILE = "README.md"
#: What makes a folder an earlier sentence_transformers export of stage 0 (stages 1-2 refuse it).
MARKER = {STATS_FILE: ("records_written", "output_format", "lines_read")}
OWN_FILES = (SHARD_GLOB, STATS_FILE, CARD_FILE)
ROWS_PER_SHARD = 100_000
ROW_GROUP_ROWS = 1_024


def stats_path(output_file: str | os.PathLike, output_format: str = "native") -> Path:
    if output_format == "sentence_transformers":
        return Path(output_file) / STATS_FILE
    return Path(f"{output_file}.stats.json")


def check_output(output_file: str, output_format: str, input_file: str) -> None:
    """Before any work: the output (file or folder) can be written and hits no input."""
    from long_ctx.common.atomic import check_output_file

    if output_format == "sentence_transformers":
        check_output_dir(output_file, MARKER, "stage-0 sentence_transformers export", inputs=[input_file],
                         overwrite=True, flag="--output_file", own=OWN_FILES)
        return
    check_output_file(output_file, [input_file])
    check_output_file(stats_path(output_file), [input_file], flag="--output_file's stats file")


def pairs_of(out: dict[str, Any], info: dict[str, Any]) -> tuple[str, str, list[str], float, list[float]]:
    """(query, positive, negatives, positive score, negative scores) of a passage or pool line."""
    if "documents" in out:  # pool: the gold at label_index, the negatives in row order
        label, docs, scores = out["label_index"], out["documents"], out["bm25_scores"]
        return (out["question"], docs[label], docs[:label] + docs[label + 1:], scores[label],
                scores[:label] + scores[label + 1:])
    return out["question"], out["positive"], out["negatives"], info["positive_score"], info["negative_scores"]


def encode(output_format: str, out: dict[str, Any], info: dict[str, Any]) -> Any:
    """What the sink of `output_format` writes for one record."""
    if output_format == "native":
        return orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)
    query, pos, negs, pos_score, neg_scores = pairs_of(out, info)
    if output_format == "flag_embedding":
        row = {"query": query, "pos": [pos], "neg": negs, "pos_scores": [pos_score], "neg_scores": neg_scores}
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    return query, pos, negs


class JsonlSink:
    folder = False

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write(self, payload: bytes) -> bool:
        self.stream.write(payload)
        return True

    def finish(self, stats: dict[str, Any]) -> None:
        pass


class ParquetSink:
    """Rows (query, positive, negative_1 .. negative_K) into train-*.parquet shards of `folder`."""

    folder = True

    def __init__(self, folder: Path, k: int) -> None:
        self.dir = folder
        self.k = k
        self.names = ["query", "positive", *(f"negative_{i}" for i in range(1, k + 1))]
        self.schema = pa.schema([pa.field(n, pa.string()) for n in self.names])
        self.writer = ShardWriter(folder, self.schema, ROWS_PER_SHARD, ROW_GROUP_ROWS, use_dictionary=False)
        self.rows: list[list[str]] = []
        self.dropped = self.kept = 0
        self.shards: list[Path] = []

    def write(self, payload: tuple[str, str, list[str]]) -> bool:
        """False (nothing written) for a record with fewer than K negatives: the columns are fixed."""
        query, pos, negs = payload
        if len(negs) < self.k:
            self.dropped += 1
            return False
        self.rows.append([query, pos, *negs[: self.k]])
        self.kept += 1
        if len(self.rows) == ROW_GROUP_ROWS:
            self._flush()
        return True

    def _flush(self) -> None:
        columns = list(zip(*self.rows))
        self.writer.write(pa.RecordBatch.from_arrays([pa.array(c, pa.string()) for c in columns], schema=self.schema))
        self.rows = []

    def finish(self, stats: dict[str, Any]) -> None:
        if self.rows:
            self._flush()
        if not self.kept:
            # An empty folder would "load" only to fail in datasets with "corresponds to no data".
            raise ValueError(f"no record has {self.k} negatives for the n-tuple columns negative_1..{self.k} "
                             f"({self.dropped:,} had fewer); lower --num_negatives / --pool_docs or loosen the "
                             "mining flags")
        self.shards = self.writer.close()
        stats["rows_written"] = self.writer.num_rows
        stats["shards"] = [p.name for p in self.shards]
        write_json(self.dir / STATS_FILE, stats)
        _write_card(self.dir / CARD_FILE, stats, self.k)


def _write_card(path: Path, stats: dict[str, Any], k: int) -> None:
    cfg = stats["config"]
    flags = [f"--{name} {cfg[name]}" for name in ("mode", "negative_strategy", "num_negatives", "negative_range",
                                                   "max_score_ratio", "negative_mix", "match_length", "seed")
             if cfg.get(name) is not None]
    counts = markdown_table(["lines read", "records made", "rows written", "records with fewer than K negatives"],
                            [[stats["lines_read"], stats["records_written"], stats["rows_written"],
                              stats["records_dropped_fewer_negatives"]]])
    write_dataset_card(
        path,
        title=f"{Path(stats['output_file']).name}: BM25-mined hard negatives (n-tuple)",
        intro=(f"Made by long-ctx-reranker stage 0 from `{Path(stats['input_file']).name}`: one row per question, "
               f"`query`, `positive` (the gold passage) and `negative_1` .. `negative_{k}`, the layout "
               "sentence-transformers' `mine_hard_negatives` writes with `output_format=\"n-tuple\"`. Load with "
               "`datasets.load_dataset(DIR, split=\"train\")`."),
        sections=[("How it was made", "`" + " ".join(flags) + "`"), ("Counts", counts),
                  ("Files", f"Shards: {', '.join(stats['shards'])}. Full statistics: `{STATS_FILE}`.")],
        tags=("sentence-transformers", "reranking", "hard-negatives", "bm25"),
    )


@contextlib.contextmanager
def _zstd_or_plain(fh: BinaryIO, path: str | os.PathLike) -> Iterator[BinaryIO]:
    """`fh` itself, or a zstd stream into it when the output is named *.zst."""
    if not is_zstd_path(path):
        yield fh
        return
    with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(fh, closefd=False) as zw:
        yield zw


@contextlib.contextmanager
def open_sink(output_file: str, output_format: str, k: int) -> Iterator[JsonlSink | ParquetSink]:
    """The run's sink, written atomically: it appears at `output_file` only on a clean exit."""
    if output_format == "sentence_transformers":
        with atomic_dir(output_file) as tmp:
            yield ParquetSink(tmp, k)
        return
    with atomic_file(output_file, "wb") as fh, _zstd_or_plain(fh, output_file) as stream:
        yield JsonlSink(stream)


# ---------------------------------------------------------------------------------------------
# Recognising an export where stages 1-2 expect native data

NATIVE_ONLY = ("stages 1-2 read stage 0's native jsonl; run stage 0 again without --output_format "
               "(or with --output_format native) for them")


def is_export_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by --output_format sentence_transformers."""
    p = Path(path) / STATS_FILE
    if not p.is_file():
        return False
    try:
        stats = orjson.loads(p.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(stats, dict) and stats.get("output_format") == "sentence_transformers"


def is_flag_embedding_line(obj: Any) -> bool:
    """Whether a parsed jsonl line is a --output_format flag_embedding one (not a native record)."""
    return isinstance(obj, dict) and {"query", "pos", "neg"} <= obj.keys() and "question" not in obj
