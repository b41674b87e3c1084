"""Stage 2 on a real stage-1 dataset: rows vs an oracle from TRIE ids, padding.json, flags."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from datasets import load_dataset
from stage12_helpers import make_records, write_jsonl

from long_ctx.stage1 import Stage1Config
from long_ctx.stage1 import main as stage1
from long_ctx.stage2 import Stage2Config
from long_ctx.stage2 import main as stage2
from long_ctx.world_tokenizer import trie_tokenizer

REPO = Path(__file__).resolve().parents[1]
SEP, CLS, PAD = 65531, 65530, 65535  # outside the vocab, so SEP/CLS are unique in every row
L = 48
PADDING_KEYS = {"max_length", "sep_token_id", "cls_token_id", "pad_token_id", "is_truncate", "num_rows",
                "num_groups", "rows_per_group", "kept_groups", "truncated_rows", "dropped_groups", "length",
                "pad_fraction", "source_dir"}


@pytest.fixture(scope="module")
def stage1_ds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s1")
    records = make_records(40, seed=11, doc_words=(0, 25))
    src = write_jsonl(tmp / "qpn.jsonl", records)
    stage1(Stage1Config(str(src), str(tmp / "ds"), num_proc=1, rows_per_shard=15, progress=False))
    return tmp / "ds", records


def _oracle(records, truncate):
    """Expected rows from TRIE ids of the original strings, built straight from the spec."""
    trie = trie_tokenizer()
    rows, dropped_groups = [], 0
    for g, rec in enumerate(records):
        q = trie.encode(rec["question"])
        group = []
        for j, text in enumerate([rec["positive"], *rec["negatives"]]):
            d = trie.encode(text)
            real = q + [SEP] + d + [CLS]
            if len(real) > L:
                if not truncate:
                    group = None
                    break
                q2 = q[: L - 2]
                real = q2 + [SEP] + d[: L - 2 - len(q2)] + [CLS]
            group.append({"input_ids": real + [PAD] * (L - len(real)), "labels": int(j == 0),
                          "length": len(real), "group": g})
        if group is None:
            dropped_groups += 1
        else:
            rows += group
    return rows, dropped_groups


@pytest.mark.parametrize("truncate", [True, False])
def test_rows_padding_json_and_card(stage1_ds, tmp_path, truncate):
    ds_dir, records = stage1_ds
    cfg = Stage2Config(str(ds_dir), L, sep_token_id=SEP, cls_token_id=CLS, pad_token_id=PAD,
                       is_truncate=truncate, output_dir=str(tmp_path / "out"), rows_per_shard=30, progress=False)
    summary = stage2(cfg)
    out = tmp_path / "out"
    expected, dropped_groups = _oracle(records, truncate)
    assert 0 < dropped_groups < len(records) or truncate  # the data exercises dropping
    assert summary["truncated_rows"] > 0 or not truncate

    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.to_list() == expected
    assert sorted(p.name for p in out.glob("*.parquet"))[0].endswith(f"-of-{len(summary['shards']):05d}.parquet")

    padding = orjson.loads((out / "padding.json").read_bytes())
    assert PADDING_KEYS <= padding.keys() and padding == summary
    lengths = np.array([r["length"] for r in expected])
    assert padding["num_rows"] == len(expected)
    assert padding["kept_groups"] == padding["num_groups"] == len(records) - dropped_groups
    assert padding["dropped_groups"] == dropped_groups
    assert padding["truncated_rows"] == sum(
        len(trie_tokenizer().encode(r["question"])) + len(trie_tokenizer().encode(d)) + 2 > L
        for r in records for d in [r["positive"], *r["negatives"]]) * truncate
    assert padding["rows_per_group"] == max(np.bincount([r["group"] for r in expected]))
    assert (padding["max_length"], padding["sep_token_id"], padding["cls_token_id"], padding["pad_token_id"],
            padding["is_truncate"]) == (L, SEP, CLS, PAD, truncate)
    for q in (50, 90, 99):
        assert padding["length"][f"p{q}"] == int(np.percentile(lengths, q, method="inverted_cdf"))
    assert padding["length"]["max"] == lengths.max()
    assert abs(padding["pad_fraction"] - (1 - lengths.sum() / (len(lengths) * L))) < 1e-5
    assert padding["source_dir"] == str(ds_dir.resolve())
    card = (out / "README.md").read_text()
    assert "](row_lengths.png)" in card and (out / "row_lengths.png").stat().st_size > 0
    assert pq.ParquetFile(sorted(out.glob("*.parquet"))[0]).schema_arrow.field("labels").type == "int8"


def test_default_output_dir_follows_seed_naming(stage1_ds):
    ds_dir, _ = stage1_ds
    summary = stage2(Stage2Config(str(ds_dir), 40, is_truncate=False, progress=False))
    expected = ds_dir.parent / f"{ds_dir.name}_padded_40_cls_1_sep_2_truncate_False_pad_0"
    assert (expected / "padding.json").is_file() and summary["max_length"] == 40


def test_empty_stage1_dataset_gives_empty_rows(tmp_path):
    src = write_jsonl(tmp_path / "qpn.jsonl", [b"\n"])
    stage1(Stage1Config(str(src), str(tmp_path / "ds"), num_proc=1, progress=False))
    summary = stage2(Stage2Config(str(tmp_path / "ds"), 16, output_dir=str(tmp_path / "out"), progress=False))
    assert summary["num_rows"] == 0 and summary["pad_fraction"] == 0.0
    assert pq.read_table(tmp_path / "out" / "train-00000-of-00001.parquet").num_rows == 0


@pytest.mark.parametrize("kw, message", [
    ({"max_length": 2}, "--max_length must be an integer >= 3"),
    ({"sep_token_id": 65536}, "--sep_token_id must be an integer in 0..65535"),
    ({"pad_token_id": -1}, "--pad_token_id must be an integer in 0..65535"),
    ({"sep_token_id": 1, "cls_token_id": 1}, "must be distinct"),
    ({"rows_per_shard": 0}, "--rows_per_shard must be >= 1"),
])
def test_bad_flags_give_clear_errors(stage1_ds, tmp_path, kw, message):
    ds_dir, _ = stage1_ds
    args = {"max_length": 16, "output_dir": str(tmp_path / "out"), "progress": False, **kw}
    with pytest.raises(ValueError, match=message):
        stage2(Stage2Config(str(ds_dir), **args))
    assert not (tmp_path / "out").exists()


def test_cli_flags_and_missing_dataset(stage1_ds, tmp_path):
    ds_dir, _ = stage1_ds
    script = REPO / "long_ctx" / "2_create_padded_data.py"
    ok = subprocess.run([sys.executable, str(script), "--ds_dir", str(ds_dir), "--max_length", "64",
                         "--sep_token_id", "5", "--cls_token_id", "6", "--pad_token_id", "7", "--no-is_truncate",
                         "--output_dir", str(tmp_path / "o"), "--rows_per_shard", "1000", "--no_progress"],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    padding = orjson.loads((tmp_path / "o" / "padding.json").read_bytes())
    assert (padding["sep_token_id"], padding["cls_token_id"], padding["pad_token_id"], padding["is_truncate"]) == (
        5, 6, 7, False)
    missing = subprocess.run([sys.executable, str(script), "--ds_dir", str(tmp_path / "nope"), "--max_length", "8"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode != 0 and "run long_ctx/1_create_datasets.py first" in missing.stderr
