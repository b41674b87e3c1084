"""Stage 0's mining flags and export formats against independent computations: rank_bm25 scores
of the sample's ground-truth records (the generator), str.split() word counts, the consumers'
own loaders (datasets.load_dataset for the parquet folder, FlagEmbedding's jsonl keys and types)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import subprocess
import sys

import datasets
import numpy as np
import orjson
import pytest
from stage0_helpers import ref_scores

from long_ctx.common.cli import UsageError
from long_ctx.stage0.bm25.codepoints import JoinedDocs
from long_ctx.stage0.driver import Stage0Config, main
from long_ctx.stage0.mining import document_word_counts, mix_counts
from long_ctx.stage0.synthetic_nq import generate
from long_ctx.stage1 import Stage1Config
from long_ctx.stage1 import main as stage1
from long_ctx.stage2 import Stage2Config
from long_ctx.stage2 import main as stage2

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "nq_sample.jsonl.zst"


@pytest.fixture(scope="module")
def truth():
    """The sample's records with rank_bm25 scores, candidates and BM25 ranks, computed here."""
    out = []
    for s in generate(200):
        rec = s.record
        gold = rec.gold_id - 1
        scores = ref_scores(rec.documents, rec.question)
        needle, gold_words = rec.answer.lower(), rec.documents[gold].split()
        cands = [i for i, d in enumerate(rec.documents)
                 if i != gold and d.split() != gold_words and not (needle and needle in d.lower())]
        ranked = sorted(cands, key=lambda i: (-scores[i], i))
        out.append(dict(rec=rec, gold=gold, scores=scores, cands=cands, rank={d: r + 1 for r, d in enumerate(ranked)}))
    return out


def run(tmp_path, name, **flags):
    out = tmp_path / name
    stats = main(Stage0Config(str(SAMPLE), str(out), progress=False, **{"num_splits": 1, **flags}))
    return out, stats


def lines(path):
    return [orjson.loads(x) for x in Path(path).read_bytes().splitlines()]


def test_range_and_margin_match_rank_bm25(tmp_path, truth):
    a, b, ratio = 2, 6, 0.8
    for strategy in ("hardest", "least"):
        out, stats = run(tmp_path, f"{strategy}.jsonl", negative_range=f"{a}-{b}", max_score_ratio=ratio,
                         negative_strategy=strategy, num_negatives=3)
        rows = {r["line_number"]: r for r in lines(out)}
        drops = {"range": 0, "margin": 0, "length": 0}
        skipped = 0
        for n, t in enumerate(truth):
            s, gold = t["scores"], t["gold"]
            in_range = [d for d in t["cands"] if a <= t["rank"][d] <= b]
            allowed = [d for d in in_range if s[d] < ratio * s[gold]]
            if not allowed:
                skipped += 1
                assert n not in rows
                continue
            drops["range"] += len(t["cands"]) - len(in_range)  # (counted over the records written)
            drops["margin"] += len(in_range) - len(allowed)
            sign = -1 if strategy == "hardest" else 1
            expected = sorted(allowed, key=lambda d: (sign * s[d], d))[:3]
            row = rows[n]
            assert row["negative_ids"] == [d + 1 for d in expected]
            assert row["negative_ranks"] == [t["rank"][d] for d in expected]
            assert row["negative_kinds"] == [{"hardest": "hard", "least": "least"}[strategy]] * len(expected)
        assert stats["mining"]["candidates_dropped_by_reason"] == drops
        assert stats["records_skipped"] == skipped
        assert drops["margin"] > 0 and skipped < 200  # the sample exercises both filters


def test_random_in_range_stays_in_range(tmp_path, truth):
    out, _ = run(tmp_path, "r.jsonl", negative_range="3-10", negative_strategy="random", num_negatives=4)
    for row in lines(out):
        t = truth[row["line_number"]]
        allowed = {d + 1 for d in t["cands"] if 3 <= t["rank"][d] <= 10}
        assert set(row["negative_ids"]) <= allowed and len(set(row["negative_ids"])) == min(4, len(allowed))


def test_largest_remainder_counts():
    # Hand-worked: 5:3:2 of 4 -> quotas 2, 1.2, 0.8 -> floors 2, 1, 0, the one left to H (0.8).
    assert mix_counts((5, 3, 2), 4) == (2, 1, 1)
    assert mix_counts((5, 3, 2), 1) == (1, 0, 0)
    assert mix_counts((5, 3, 2), 15) == (8, 4, 3)  # 7.5, 4.5, 3: the tie goes to E, written first
    assert mix_counts((0, 1, 1), 3) == (0, 2, 1)
    for k in range(1, 30):  # always K in all, each within 1 of its exact quota
        c = mix_counts((5, 3, 2), k)
        assert sum(c) == k and all(abs(x - Fraction(k * r, 10)) < 1 for x, r in zip(c, (5, 3, 2)))


def test_mix_counts_kinds_and_easy_negatives_come_from_other_records(tmp_path, truth):
    out, stats = run(tmp_path, "mix.jsonl", negative_mix="5:3:2", num_negatives=4)
    rows = lines(out)
    assert len(rows) == 200
    own_texts = [set(t["rec"].documents) for t in truth]
    seen_before: set[str] = set()
    kinds_total: dict[str, int] = {}
    for row in rows:
        n = row["line_number"]
        t = truth[n]
        kinds = row["negative_kinds"]
        for k in kinds:
            kinds_total[k] = kinds_total.get(k, 0) + 1
        if n > 0:  # record 0 has no earlier record: its easy share falls to medium (counted)
            assert sorted(kinds) == sorted(["easy", "easy", "medium", "hard"]), n
        hard = [i for i, k in zip(row["negative_ids"], kinds) if k == "hard"]
        assert hard == [min(t["cands"], key=lambda d: t["rank"][d]) + 1]  # the hardest: rank 1
        for text, k, i, rank in zip(row["negatives"], kinds, row["negative_ids"], row["negative_ranks"]):
            if k == "easy":
                assert (i, rank) == (0, None)
                assert text not in own_texts[n], "an easy negative is one of the record's own documents"
                assert t["rec"].answer.lower() not in text.lower()
                assert text in seen_before, "easy negatives come from earlier records"
            else:
                assert t["rec"].documents[i - 1] == text and t["rank"][i - 1] == rank and i - 1 in t["cands"]
        assert len(set(row["negatives"])) == len(row["negatives"])
        seen_before |= own_texts[n]
    assert stats["mining"]["negatives_by_kind"] == kinds_total
    assert stats["mining"]["mix_shortfall_by_kind"]["easy"] == 2  # record 0's two easy ones


def test_every_new_flag_is_worker_independent(tmp_path):
    flags = dict(negative_range="1-30", max_score_ratio=0.95, negative_mix="5:3:2", match_length=0.3,
                 num_negatives=4, seed=3)
    for fmt in ("native", "flag_embedding"):
        a, _ = run(tmp_path, f"a_{fmt}.jsonl", num_splits=1, output_format=fmt, **flags)
        b, _ = run(tmp_path, f"b_{fmt}.jsonl", num_splits=2, output_format=fmt, **flags)
        assert a.read_bytes() == b.read_bytes() and a.stat().st_size > 0
    pool = dict(mode="pool", pool_docs=6, negative_range="2-12", max_score_ratio=0.9, match_length=0.5)
    a, _ = run(tmp_path, "pa.jsonl", num_splits=1, **pool)
    b, _ = run(tmp_path, "pb.jsonl", num_splits=2, **pool)
    assert a.read_bytes() == b.read_bytes()


def test_pool_rows_honour_range_and_margin(tmp_path, truth):
    out, _ = run(tmp_path, "pool.jsonl", mode="pool", pool_docs=4, negative_range="2-12", max_score_ratio=0.9)
    for row in lines(out):
        t = truth[row["line_number"]]
        negs = [d - 1 for d in row["doc_ids"] if d != row["gold_id"]]
        assert negs and all(2 <= t["rank"][d] <= 12 and t["scores"][d] < 0.9 * t["scores"][t["gold"]] for d in negs)
        assert row["negative_ranks"] == [t["rank"][d] for d in negs]


def test_word_counts_are_str_split(truth):
    texts = ["", "one", "  two  words ", "a\u00a0b\u2003c\u3000d\x1ce", "x\n\ny", "\u0085", "naïve café ☕ 名字"]
    counts = document_word_counts(JoinedDocs(texts))
    assert counts.tolist() == [len(t.split()) for t in texts]
    for t in truth:
        docs = t["rec"].documents
        assert document_word_counts(JoinedDocs(docs)).tolist() == [len(d.split()) for d in docs]


def _share(rows):
    pairs = [(len(r["positive"].split()), len(n.split())) for r in rows for n in r["negatives"]]
    return sum(p > q for p, q in pairs) / len(pairs), pairs


def test_match_length_removes_the_length_shortcut_on_the_sample(tmp_path):
    plain, plain_stats = run(tmp_path, "plain.jsonl")
    share, pairs = _share(lines(plain))
    w = plain_stats["words"]
    assert w["positive_longer_share"] == round(share, 4) and share > 0.65 and w["warning"]
    assert w["negative"]["mean"] == round(np.mean([q for _, q in pairs]), 3)
    assert w["negative"]["median"] == int(np.percentile([q for _, q in pairs], 50, method="inverted_cdf"))
    out, stats = run(tmp_path, "ml.jsonl", match_length=0.2)
    rows = lines(out)
    share, pairs = _share(rows)
    assert 0.35 <= share <= 0.65 and stats["words"]["positive_longer_share"] == round(share, 4)
    assert not stats["words"]["warning"]
    assert all(abs(q - p) <= 0.2 * p for p, q in pairs)
    assert stats["records_written"] + stats["records_skipped"] == 200
    assert stats["skipped_by_reason"].get("no_negative_of_matching_length", 0) == stats["records_skipped"]


def test_flag_embedding_lines_have_its_keys_and_types(tmp_path, truth):
    out, _ = run(tmp_path, "fe.jsonl", output_format="flag_embedding", num_negatives=3, negative_range="1-20")
    for n, row in enumerate(lines(out)):
        t = truth[n]
        assert list(row) == ["query", "pos", "neg", "pos_scores", "neg_scores"]
        assert row["query"] == t["rec"].question and row["pos"] == [t["rec"].documents[t["gold"]]]
        assert all(isinstance(x, str) for x in row["neg"]) and len(row["neg"]) == len(row["neg_scores"]) == 3
        assert all(isinstance(x, float) for x in row["pos_scores"] + row["neg_scores"])
        idx = [t["rec"].documents.index(x) for x in row["neg"]]
        np.testing.assert_allclose(row["neg_scores"], t["scores"][idx], rtol=1e-9)
        np.testing.assert_allclose(row["pos_scores"], [t["scores"][t["gold"]]], rtol=1e-9)


def test_sentence_transformers_folder_loads_and_stages_1_2_refuse_exports(tmp_path):
    # --match_length leaves some records fewer than 3 negatives: they get no row.
    flags = dict(num_negatives=3, negative_mix="0:1:1", match_length=0.1, seed=5)
    native, _ = run(tmp_path, "n.jsonl", **flags)
    folder, stats = run(tmp_path, "st", output_format="sentence_transformers", **flags)
    ds = datasets.load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["query", "positive", "negative_1", "negative_2", "negative_3"]
    expected = [r for r in lines(native) if len(r["negatives"]) == 3]
    assert len(expected) < len(lines(native))
    assert len(ds) == len(expected) == stats["rows_written"] == stats["records_written"] > 0
    # A record that has no row is a skip (by reason), not a written record the stats describe.
    dropped = len(lines(native)) - len(expected)
    assert stats["records_dropped_fewer_negatives"] == stats["skipped_by_reason"].get(
        "fewer_negatives_than_columns", 0) == dropped
    for got, r in zip(ds, expected):
        assert [got["query"], got["positive"], got["negative_1"], got["negative_2"], got["negative_3"]] == \
            [r["question"], r["positive"], *r["negatives"]]
    assert "mine_hard_negatives" in (folder / "README.md").read_text()
    # A second run replaces its own earlier folder; a folder of the user's is refused.
    run(tmp_path, "st", output_format="sentence_transformers", **flags)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UsageError):
        run(tmp_path, "mine", output_format="sentence_transformers", **flags)
    fe, _ = run(tmp_path, "fe.jsonl", output_format="flag_embedding")
    for bad in (fe, folder):
        with pytest.raises(UsageError, match="native"):
            stage1(Stage1Config(str(bad), str(tmp_path / "s1"), num_proc=1, progress=False))
    with pytest.raises(UsageError, match="sentence_transformers"):
        stage2(Stage2Config(str(folder), 64))


@pytest.mark.parametrize("flags", [dict(mode="window", negative_range="2-5"), dict(mode="pool", negative_mix="1:1:1"),
                                   dict(mode="window", output_format="flag_embedding"),
                                   dict(negative_range="5-2"), dict(max_score_ratio=0.0), dict(negative_mix="1:2"),
                                   dict(negative_mix="1:1:1", negative_strategy="random"), dict(match_length=-0.1)])
def test_flags_a_mode_cannot_honour_are_refused(tmp_path, flags):
    with pytest.raises(ValueError, match="--"):
        main(Stage0Config(str(SAMPLE), str(tmp_path / "o.jsonl"), progress=False, **flags))


def test_sentence_transformers_export_with_no_complete_row_is_a_one_line_error(tmp_path):
    # 250 negatives: no pool of the sample has that many documents (10-200).
    out = tmp_path / "st"
    proc = subprocess.run([sys.executable, "long_ctx/0_create_q_p_n.py", "--input_file", str(SAMPLE), "--output_file",
                           str(out), "--num_negatives", "250", "--limit", "3", "--output_format", "sentence_transformers",
                           "--no_progress"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error: no record has 250 negatives"), proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_max_score_ratio_never_keeps_a_negative_above_a_gold_with_a_negative_score():
    from long_ctx.stage0.mining import MiningSpec, filter_candidates
    from rank_bm25 import BM25Okapi

    # Every query term is in every document, so rank_bm25's idf (and every score) is negative.
    docs = ["red apple tree", "red apple tree red apple tree red apple tree grows", "red apple tree red",
            "red apple tree x"]
    scores = BM25Okapi([d.split() for d in docs]).get_scores("red apple tree".split())
    gold = 1
    assert scores[gold] < 0 and max(scores[i] for i in (0, 2, 3)) > scores[gold]
    f = filter_candidates(scores, np.array([0, 2, 3]), gold, MiningSpec(max_score_ratio=0.5), 3,
                          lambda: np.zeros(4, np.int64), 3)
    kept = [d for d, k in zip([0, 2, 3], f.kept) if k]
    assert all(scores[d] < scores[gold] for d in kept)
    # With a positive gold the bound is R x its score, as in sentence-transformers' relative_margin.
    pos = np.array([4.0, 1.0, 2.1, 1.9])
    f = filter_candidates(pos, np.array([1, 2, 3]), 0, MiningSpec(max_score_ratio=0.5), 3,
                          lambda: np.zeros(4, np.int64), 3)
    assert f.kept.tolist() == [True, False, True]


def test_easy_pool_is_bounded_and_never_hands_a_record_its_own_text_or_its_answer():
    """Past its size the reservoir replaces entries (seeded); a pick skips any text as long as one
    of the record's own documents (so never one of them, even one shared with an earlier record),
    any text containing the answer, and texts already taken."""
    from long_ctx.stage0.easy_pool import EasyPool
    from long_ctx.stage0.mining import Pending

    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{rng.integers(1000)}" for _ in range(rng.integers(5, 40))) for _ in range(500)]
    pool = EasyPool(7, size=16)
    for i in range(0, 500, 2):
        pool.offer([(t, len(t.split())) for t in texts[i:i + 2]])
    assert len(pool.docs) == 16 and pool.offered == 500
    held = [d.text for d in pool.docs]
    assert len(set(held)) > 1 and set(held) <= set(texts) and held != texts[:16]  # replaced, not just the first
    own = held[:3]  # the record shares three documents with earlier records
    needle = held[3].split()[0]
    p = Pending(counts=(16, 0, 0), hard=[], medium=[], needle=needle, own_lengths=frozenset(map(len, own)),
                word_band=(0, 10**9))
    taken: set = set()
    got = [t for t, _ in pool.pick(p, 16, taken)]
    assert got and not set(got) & set(own) and all(needle not in t for t in got)
    assert len(set(got)) == len(got) and set(got) == taken
    assert not set(pool.pick(p, 16, taken)) & set(got)  # what is taken stays taken
