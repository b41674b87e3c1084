"""Bundled sample -> stage 0 -> stage 1 -> stage 2, each through its command line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from datasets import load_dataset

from long_ctx.world_tokenizer import trie_tokenizer

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "nq_sample.jsonl.zst"
STAGE0 = REPO / "long_ctx" / "0_create_q_p_n.py"
SEP, CLS, PAD = 65532, 65533, 0
L = 160
K = 3


def _run(script: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "long_ctx" / script), *args],
                          capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.skipif(not (SAMPLE.exists() and STAGE0.exists()), reason="stage 0 or the bundled sample is missing")
def test_sample_through_stages_0_1_2(tmp_path):
    qpn = tmp_path / "qpn.jsonl"
    _run("0_create_q_p_n.py", "--input_file", str(SAMPLE), "--output_file", str(qpn), "--num_splits", "1",
         "--num_negatives", str(K), "--no_progress", cwd=tmp_path)
    records = [orjson.loads(line) for line in qpn.read_bytes().splitlines()]
    assert len(records) >= 150

    _run("1_create_datasets.py", "--input_file", str(qpn), "--output_dir", str(tmp_path / "ds"), "--num_proc", "1",
         "--no_progress", cwd=tmp_path)
    ds1 = load_dataset(str(tmp_path / "ds"), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds1.num_rows == len(records)
    trie = trie_tokenizer()
    for row, rec in zip(ds1, records):
        for c in ("question", "answer", "long_answer", "positive", "negative"):
            assert row[c] == trie.encode(rec[c])
        assert row["negatives"] == [trie.encode(s) for s in rec["negatives"]]
        assert (row["gold_id"], row["negative_ids"], row["line_number"]) == (
            rec["gold_id"], rec["negative_ids"], rec["line_number"])

    _run("2_create_padded_data.py", "--ds_dir", str(tmp_path / "ds"), "--max_length", str(L),
         "--sep_token_id", str(SEP), "--cls_token_id", str(CLS), "--pad_token_id", str(PAD), "--is_truncate",
         "--no_progress", cwd=tmp_path)
    out = tmp_path / f"ds_padded_{L}_cls_{CLS}_sep_{SEP}_truncate_True_pad_{PAD}"
    rows = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert rows.num_rows == sum(1 + len(r["negatives"]) for r in records)
    padding = orjson.loads((out / "padding.json").read_bytes())
    assert padding["num_rows"] == rows.num_rows and padding["kept_groups"] == len(records)
    truncated = 0
    i = 0
    for g, src in enumerate(ds1):
        for j, doc in enumerate([src["positive"], *src["negatives"]]):
            row = rows[i]
            i += 1
            ids, n = row["input_ids"], row["length"]
            assert (row["group"], row["labels"]) == (g, int(j == 0)) and len(ids) == L
            s = ids.index(SEP)
            assert ids.count(SEP) == 1 and ids.count(CLS) == 1 and ids[n - 1] == CLS
            assert ids[:s] == src["question"][:s] and ids[s + 1 : n - 1] == doc[: n - 2 - s]
            assert all(t == PAD for t in ids[n:])
            truncated += len(src["question"]) + len(doc) + 2 > L
    assert padding["truncated_rows"] == truncated > 0
