"""Stage 1 end to end on generated stage-0 files: ids vs TRIE, loading, bad lines, determinism."""
from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from datasets import load_dataset
from stage12_helpers import make_records, write_jsonl

from long_ctx.stage1 import Stage1Config, main
from long_ctx.world_tokenizer import trie_tokenizer

REPO = Path(__file__).resolve().parents[1]
ID_COLUMNS = ["question", "answer", "long_answer", "positive", "negative"]


def _good(**overrides) -> dict:
    rec = make_records(1, seed=99)[0]
    rec.update(overrides)
    return rec


def _without(key: str) -> dict:
    rec = _good()
    del rec[key]
    return rec


# (line, expected skip reason): each defect of the input contract, named.
BAD_LINES = [
    (b"{not json\n", "invalid_json"),
    (b'{"question": "\\ud800"}\n', "invalid_json"),  # lone surrogate: cannot be UTF-8 encoded
    (b"[1, 2, 3]\n", "not_an_object"),
    (b"\n", "blank_line"),
    (_without("answer"), "missing_key:answer"),
    (_without("negatives"), "missing_key:negatives"),
    (_without("line_number"), "missing_key:line_number"),
    (_good(question=7), "wrong_type:question"),
    (_good(positive=None), "wrong_type:positive"),
    (_good(negatives="text"), "wrong_type:negatives"),
    (_good(negatives=["a", 3], negative="a"), "wrong_type:negatives"),
    (_good(negative_ids=[1.5]), "wrong_type:negative_ids"),
    (_good(gold_id="3"), "wrong_type:gold_id"),
    (_good(gold_id=True), "wrong_type:gold_id"),
    (_good(gold_id=-1), "id_out_of_range"),
    (_good(negatives=[], negative="", negative_ids=[]), "no_negatives"),
    (_good(negatives=["a", "b"], negative="a", negative_ids=[1]), "negatives_and_ids_differ_in_length"),
    (_good(negative="not the first"), "negative_is_not_first_of_negatives"),
]


def _read_rows(out: Path) -> list[dict]:
    return pq.read_table(sorted(out.glob("train-*.parquet"))).to_pylist()


def _nearest_rank(values, q):
    return int(np.percentile(np.asarray(values), q, method="inverted_cdf"))


def test_ids_equal_trie_bad_lines_counted_and_dataset_loads(tmp_path):
    records = make_records(47, seed=1)
    lines = list(records)
    for i, (bad, _) in enumerate(BAD_LINES):
        lines.insert(3 * i + 1, bad)  # interleave so good/bad share chunks
    src = write_jsonl(tmp_path / "qpn.jsonl", lines)
    out = tmp_path / "ds"
    stats = main(Stage1Config(str(src), str(out), num_proc=1, keep_text=True, rows_per_shard=20,
                              row_group_rows=7, chunk_size=9, progress=False))

    expected = collections.Counter(reason for _, reason in BAD_LINES)
    assert stats["skipped_by_reason"] == dict(expected)
    assert stats["records_written"] == len(records) and stats["lines_read"] == len(lines)
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert (out / "README.md").read_text().startswith("---\n") and (out / "token_lengths.png").stat().st_size > 0

    ds = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == len(records)
    assert load_dataset("parquet", data_dir=str(out), cache_dir=str(tmp_path / "cache2"))["train"].num_rows == len(records)
    assert ds.features["question"].feature.dtype == "uint16"

    trie = trie_tokenizer()
    for row, rec in zip(ds, records):
        for c in ID_COLUMNS:
            assert row[c] == trie.encode(rec[c])
            assert row[f"{c}_text"] == rec[c]
        assert row["negatives"] == [trie.encode(s) for s in rec["negatives"]]
        assert row["negatives_text"] == rec["negatives"]
        for c in ("gold_id", "negative_ids", "num_documents", "line_number"):
            assert row[c] == rec[c]

    q_lengths = [len(trie.encode(r["question"])) for r in records]
    neg_lengths = [len(trie.encode(s)) for r in records for s in r["negatives"]]
    for name, lengths in (("question", q_lengths), ("negatives", neg_lengths)):
        s = stats["token_lengths"][name]
        assert s["count"] == len(lengths) and s["max"] == max(lengths) and s["total"] == sum(lengths)
        for q in (50, 90, 99):
            assert s[f"p{q}"] == _nearest_rank(lengths, q)
    assert orjson.loads((out / "stats.json").read_bytes()) == stats


def test_output_bytes_do_not_depend_on_workers_or_chunking(tmp_path):
    src = write_jsonl(tmp_path / "qpn.jsonl", make_records(300, seed=2) + [b"broken\n"])
    one = tmp_path / "one"
    two = tmp_path / "two"
    main(Stage1Config(str(src), str(one), num_proc=1, chunk_size=5, rows_per_shard=128, row_group_rows=50,
                      progress=False))
    main(Stage1Config(str(src), str(two), num_proc=2, chunk_size=64, rows_per_shard=128, row_group_rows=50,
                      progress=False))
    shards = sorted(p.name for p in one.glob("*.parquet"))
    assert shards == sorted(p.name for p in two.glob("*.parquet")) and len(shards) == 3
    for name in shards:
        assert (one / name).read_bytes() == (two / name).read_bytes()
    # Row groups are cut at fixed counts, not where chunks ended.
    assert [pq.ParquetFile(one / shards[0]).metadata.row_group(i).num_rows for i in range(3)] == [50, 50, 28]


def test_zst_input_equals_plain_and_truncated_zst_fails_cleanly(tmp_path):
    records = make_records(30, seed=3)
    plain = write_jsonl(tmp_path / "qpn.jsonl", records)
    data = zstandard.ZstdCompressor().compress(plain.read_bytes())
    (tmp_path / "qpn.jsonl.zst").write_bytes(data)
    main(Stage1Config(str(plain), str(tmp_path / "a"), num_proc=1, progress=False))
    main(Stage1Config(str(tmp_path / "qpn.jsonl.zst"), str(tmp_path / "b"), num_proc=1, progress=False))
    assert _read_rows(tmp_path / "a") == _read_rows(tmp_path / "b")

    (tmp_path / "cut.jsonl.zst").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="cut.jsonl.zst"):
        main(Stage1Config(str(tmp_path / "cut.jsonl.zst"), str(tmp_path / "c"), num_proc=1, progress=False))
    assert not (tmp_path / "c").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.")]  # no temp folder left


def test_empty_input_gives_an_empty_dataset_with_the_schema(tmp_path):
    # (`datasets` itself refuses to load a split with no rows; pyarrow reads it fine.)
    src = write_jsonl(tmp_path / "empty.jsonl", [b"\n", b"{bad\n"])
    out = tmp_path / "ds"
    stats = main(Stage1Config(str(src), str(out), num_proc=1, progress=False))
    assert stats["records_written"] == 0 and stats["records_skipped"] == 2
    table = pq.read_table(out / "train-00000-of-00001.parquet")
    assert table.num_rows == 0 and table.schema.field("negatives").type.value_type.value_type == pa.uint16()


def test_cli_runs_with_limit_and_rejects_bad_flags(tmp_path):
    src = write_jsonl(tmp_path / "qpn.jsonl", make_records(12, seed=4))
    script = REPO / "long_ctx" / "1_create_datasets.py"
    ok = subprocess.run([sys.executable, str(script), "--input_file", str(src), "--output_dir", str(tmp_path / "ds"),
                         "--num_proc", "1", "--limit", "5", "--no_progress"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert len(_read_rows(tmp_path / "ds")) == 5 and "stage 1: 5 records" in ok.stdout
    bad = subprocess.run([sys.executable, str(script), "--input_file", str(src), "--output_dir", str(tmp_path / "x"),
                          "--num_proc", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "--num_proc must be >= 1" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_a_run_reads_one_stage0_mode_the_first_records(tmp_path):
    src = tmp_path / "mixed.jsonl"
    other = _good(mode="some-other-mode")
    write_jsonl(src, [b"not json\n", _good(), other, _good(mode="passage")])
    stats = main(Stage1Config(input_file=str(src), output_dir=str(tmp_path / "ds"), num_proc=1, progress=False))
    # The first record has no `mode`: a passage run; the line of another mode is skipped by name.
    assert stats["mode"] == "passage" and stats["records_written"] == 2
    assert stats["skipped_by_reason"] == {"invalid_json": 1, "mode_mismatch": 1}
    unknown = tmp_path / "unknown.jsonl"
    write_jsonl(unknown, [other])
    with pytest.raises(ValueError, match="does not know stage-0 mode 'some-other-mode'"):
        main(Stage1Config(input_file=str(unknown), output_dir=str(tmp_path / "ds2"), num_proc=1, progress=False))
    assert not (tmp_path / "ds2").exists()
