"""Pool rows from the bundled sample through stages 0 -> 1 -> 2 (`--mode pool`), checked against
independent oracles: TRIE_TOKENIZER decodes the ids between consecutive CLS positions into the
document's text, rank_bm25 gives the scores, and 1- and 2-worker runs give the same bytes."""
from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from stage0_helpers import ref_scores

from long_ctx.common.line_reader import iter_lines
from long_ctx.stage0.driver import Stage0Config
from long_ctx.stage0.driver import main as stage0
from long_ctx.stage1 import Stage1Config
from long_ctx.stage1 import main as stage1
from long_ctx.stage2 import Stage2Config
from long_ctx.stage2 import main as stage2
from long_ctx.stage0.nq_format import parse_line
from long_ctx.stage2.pool_rows import build_pool_row
from long_ctx.world_tokenizer import trie_tokenizer

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "nq_sample.jsonl.zst"
SEP, CLS, PAD = 2, 1, 0
K, L = 6, 600  # rows need ~750 tokens, so truncation drops negatives from most of them


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    for w in (1, 2):
        stage0(Stage0Config(str(SAMPLE), str(d / f"pool{w}.jsonl"), num_splits=w, mode="pool", pool_docs=K,
                            negative_strategy="random", seed=3, progress=False))
        stage1(Stage1Config(str(d / f"pool{w}.jsonl"), str(d / f"ds{w}"), num_proc=w, progress=False))
        stage2(Stage2Config(str(d / f"ds{w}"), L, SEP, CLS, PAD, True, str(d / f"rows{w}"), progress=False))
    return d


def _rows(folder: Path) -> list[dict]:
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_outputs_do_not_depend_on_the_number_of_workers(pipeline):
    d = pipeline
    assert (d / "pool1.jsonl").read_bytes() == (d / "pool2.jsonl").read_bytes()
    for stage in ("ds", "rows"):
        shards = sorted(p.name for p in (d / f"{stage}1").glob("*.parquet"))
        assert shards and shards == sorted(p.name for p in (d / f"{stage}2").glob("*.parquet"))
        for name in shards:
            assert filecmp.cmp(d / f"{stage}1" / name, d / f"{stage}2" / name, shallow=False), name


def test_stage0_pool_lines(pipeline):
    lines = _lines(pipeline / "pool1.jsonl")
    assert len(lines) == 200
    for x in lines[:40]:
        assert x["mode"] == "pool" and len(x["documents"]) == len(x["doc_ids"]) == len(x["bm25_scores"]) == K
        assert x["doc_ids"][x["label_index"]] == x["gold_id"] and len(set(x["doc_ids"])) == K
        negatives = [doc for i, doc in enumerate(x["documents"]) if i != x["label_index"]]
        assert not any(x["answer"].lower() in doc.lower() for doc in negatives)
    # The scores are rank_bm25's over the record's whole pool.
    for (_, raw), x in zip(iter_lines(SAMPLE), lines[:8]):
        pool = parse_line(raw).documents
        want = ref_scores(pool, x["question"])
        np.testing.assert_array_equal(x["bm25_scores"], want[np.array(x["doc_ids"]) - 1])
    stats = orjson.loads((pipeline / "pool1.jsonl.stats.json").read_bytes())
    assert stats["pool"]["documents_per_row"]["min"] == K and sum(stats["pool"]["gold_position_histogram"]) == 200
    # Shuffled: the gold is not stuck at one position (6 slots, 200 rows).
    assert max(stats["pool"]["gold_index_counts"].values()) < 70


def test_every_row_decodes_to_its_documents_with_one_label_on_the_gold(pipeline):
    trie = trie_tokenizer()
    lines = _lines(pipeline / "pool1.jsonl")
    rows = _rows(pipeline / "rows1")
    pad = orjson.loads((pipeline / "rows1" / "padding.json").read_bytes())
    assert pad["row_format"] == "pool" and pad["pool_docs"] == K and pad["num_rows"] == 200
    assert pad["dropped_documents"] > 0 and pad["dropped_documents"] == sum(K - len(r["doc_ids"]) for r in rows)
    assert [r["group"] for r in rows] == list(range(200))  # truncation never drops a row
    for r, x in zip(rows, lines):
        ids, pos, n = r["input_ids"], r["cls_positions"], r["length"]
        assert len(ids) == L and n <= L and pos[-1] == n - 1 and all(i == PAD for i in ids[n:])
        assert all(ids[p] == CLS for p in pos) and pos == sorted(set(pos))
        sep = ids.index(SEP)
        assert trie.decode(ids[:sep]) == x["question"]
        text = {i: t for i, t in zip(x["doc_ids"], x["documents"])}
        starts = [sep + 1] + [p + 1 for p in pos[:-1]]
        for a, b, doc_id in zip(starts, pos, r["doc_ids"]):
            assert trie.decode(ids[a:b]) == text[doc_id]
        assert sum(r["labels"]) == 1 and r["doc_ids"][r["labels"].index(1)] == x["gold_id"]
        # Dropped documents are negatives from the end of the list: the kept ones are the gold
        # plus the first m negatives, in order, and the next negative would not have fit.
        negatives = [i for i in x["doc_ids"] if i != x["gold_id"]]
        kept = [i for i in r["doc_ids"] if i != x["gold_id"]]
        assert kept == negatives[:len(kept)] and r["doc_ids"] == [i for i in x["doc_ids"] if i in set(r["doc_ids"])]
        if len(kept) < len(negatives):
            nxt = x["documents"][x["doc_ids"].index(negatives[len(kept)])]
            assert n + len(trie.encode(nxt)) + 1 > L


def test_row_that_only_fits_with_the_gold_cut_and_no_truncate():
    q, gold, neg = [5] * 4, [6] * 20, [7] * 3
    row = build_pool_row(q, [neg, gold, neg], 1, 12, SEP, CLS, PAD, truncate=True)
    # Both negatives go; the gold alone needs 4 + 1 + 20 + 1 = 26 > 12, so its tail is cut.
    assert row.ids.tolist() == q + [SEP] + [6] * 6 + [CLS] and row.cls_positions == [11] and row.cut
    assert row.kept == [1] and row.label_index == 0 and row.dropped_documents == 2
    fits = build_pool_row(q, [neg, gold, neg], 1, 33, SEP, CLS, PAD, truncate=True)  # all need 34; 30 fit
    assert fits.kept == [0, 1] and fits.length == 30 and not fits.cut and fits.dropped_documents == 1
    assert fits.ids.tolist() == q + [SEP] + neg + [CLS] + gold + [CLS] + [PAD] * 3 and fits.cls_positions == [8, 29]
    dropped = build_pool_row(q, [neg, gold, neg], 1, 33, SEP, CLS, PAD, truncate=False)
    assert dropped.ids is None and dropped.length == 34


def test_no_truncate_drops_rows_that_do_not_fit(pipeline, tmp_path):
    summary = stage2(Stage2Config(str(pipeline / "ds1"), 760, SEP, CLS, PAD, False, str(tmp_path / "o"),
                                  progress=False))
    rows = _rows(tmp_path / "o")
    assert 0 < summary["dropped_rows"] < 200 and len(rows) == summary["num_rows"] == 200 - summary["dropped_rows"]
    assert all(len(r["doc_ids"]) == K for r in rows) and summary["dropped_documents"] == 0


def test_stage1_counts_bad_pool_lines_by_reason(pipeline, tmp_path):
    good = _lines(pipeline / "pool1.jsonl")[0]

    def bad(**kw):
        return orjson.dumps({**good, **kw})

    cases = {
        b"documents_and_ids_differ_in_length": bad(doc_ids=good["doc_ids"][:-1]),
        b"documents_and_scores_differ_in_length": bad(bm25_scores=[1.0]),
        b"label_index_out_of_range": bad(label_index=K),
        b"gold_id_is_not_the_labelled_document": bad(gold_id=good["gold_id"] + 1000),
        b"no_documents": bad(documents=[], doc_ids=[], bm25_scores=[]),
        b"wrong_type:documents": bad(documents=["a", 1, "b", "c", "d", "e"]),
        b"missing_key:label_index": orjson.dumps({k: v for k, v in good.items() if k != "label_index"}),
        b"mode_mismatch": orjson.dumps({"mode": "passage", **{k: v for k, v in good.items() if k != "mode"}}),
    }
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(orjson.dumps(good) + b"\n" + b"\n".join(cases.values()) + b"\n")
    stats = stage1(Stage1Config(str(path), str(tmp_path / "ds"), num_proc=1, progress=False))
    assert stats["mode"] == "pool" and stats["records_written"] == 1
    assert stats["skipped_by_reason"] == {k.decode(): 1 for k in cases}
    assert "label_index" in (tmp_path / "ds" / "README.md").read_text()
