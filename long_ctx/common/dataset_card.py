"""Hugging Face dataset cards (README.md with a YAML header) for the parquet folders we write.

The YAML `configs` block pins the train split to the parquet shards. Without it `load_dataset(DIR)`
guesses the builder from the most common file extension, and the stats JSON and the PNG written
beside the shards could make it pick the wrong one.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

from long_ctx.common.atomic import atomic_file

SHARD_GLOB = "train-*.parquet"


def shard_name(index: int, count: int) -> str:
    """Hugging Face's shard naming, which `load_dataset` maps to split `train` on its own too."""
    return f"train-{index:05d}-of-{count:05d}.parquet"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def length_table(summaries: dict[str, dict]) -> str:
    """One row per length series: count, mean, p50, p90, p99, max."""
    keys = ["count", "mean", "p50", "p90", "p99", "max"]
    return markdown_table(["tokens", *keys], ([name, *(s[k] for k in keys)] for name, s in summaries.items()))


def write_dataset_card(
    path: str | os.PathLike,
    title: str,
    intro: str,
    sections: Sequence[tuple[str, str]],
    tags: Sequence[str] = ("rwkv", "reranking", "cross-encoder", "long-context"),
) -> None:
    """Write README.md: YAML header (train split = the parquet shards), title, intro, sections."""
    yaml = "\n".join(
        [
            "---",
            "configs:",
            "- config_name: default",
            "  data_files:",
            "  - split: train",
            f'    path: "{SHARD_GLOB}"',
            "tags:",
            *(f"- {t}" for t in tags),
            "---",
        ]
    )
    body = [yaml, "", f"# {title}", "", intro.strip(), ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.strip(), ""]
    with atomic_file(path, "w") as fh:
        fh.write("\n".join(body))
