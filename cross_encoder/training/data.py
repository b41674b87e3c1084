"""Stage 2's padded rows for training: loading, the split by group, batch plans and collation.

Rows arrive right-padded to L (`padding.json: max_length`) but only their first `length`
tokens matter (the model is causal and the score is read at `length-1`), so they are kept in
memory as one flat array of real tokens plus offsets and re-padded per batch to that batch's
longest row. Memory is then proportional to real tokens, not to rows x L.

Two row formats (`padding.json: row_format`): passage rows, one score at `length-1` and one
label per row; pool rows (`"pool"`), one score at every CLS position (`cls_positions`) with one
label each. A collated batch says where to read every score — (row in batch, position) — with
the score's label and group (passage rows: the row's group; pool rows: the row itself, so a
row's documents are one softmax group), so the model and the losses treat both alike.

Batch plans are pure functions of (seed, epoch, sizes): no global RNG, nothing that depends on
the number of DataLoader workers, so a resumed run sees exactly the batches an uninterrupted
one would.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from long_ctx.common.progress import progress_bar

REQUIRED_COLUMNS = ("input_ids", "labels", "length", "group")
POOL_COLUMNS = ("input_ids", "length", "cls_positions", "labels", "group")
POOL = "pool"
REQUIRED_META = ("max_length", "sep_token_id", "cls_token_id", "pad_token_id")
# HF's LengthGroupedSampler sorts inside mega-batches of 50 batches: long enough to pair up
# similar lengths, short enough that the order stays shuffled at the scale of an epoch.
MEGA_BATCH_MULT = 50
# Hugging Face shard names, as stage 2 writes them: train-00001-of-00002.parquet
SHARD_NAME_RE = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.parquet$")


@dataclass
class PaddedRows:
    """All rows of a padded dataset, stored without their padding."""

    tokens: np.ndarray   # [sum(lengths)] real tokens of every row, concatenated
    offsets: np.ndarray  # [N+1] int64; row i is tokens[offsets[i]:offsets[i+1]]
    lengths: np.ndarray  # [N] int64 real tokens incl. CLS; the CLS is at lengths[i]-1
    labels: np.ndarray   # [N] int8, 1 positive / 0 negative
    groups: np.ndarray   # [N] int64 source record; a group's rows are consecutive
    meta: dict[str, Any]  # padding.json
    # Pool rows only (None for passage rows): the scores of row i are read at
    # score_pos[score_offsets[i]:score_offsets[i+1]] with labels score_labels[...] (one per document).
    score_offsets: np.ndarray | None = None  # [N+1] int64
    score_pos: np.ndarray | None = None      # [S] int64 CLS positions, increasing within a row
    score_labels: np.ndarray | None = None   # [S] int8, exactly one 1 per row

    @property
    def is_pool(self) -> bool:
        return self.score_offsets is not None

    @property
    def row_format(self) -> str:
        return POOL if self.is_pool else "passage"

    @property
    def n_rows(self) -> int:
        return int(self.lengths.size)

    @property
    def max_length(self) -> int:
        return int(self.meta["max_length"])

    @property
    def pad_token_id(self) -> int:
        return int(self.meta["pad_token_id"])

    def row(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]


@dataclass
class GroupSpans:
    """Row ranges of the groups, in file order: group g is rows starts[g]:ends[g]."""

    starts: np.ndarray  # [G] int64
    ends: np.ndarray    # [G] int64
    max_len: np.ndarray  # [G] longest real row of the group

    @property
    def n_groups(self) -> int:
        return int(self.starts.size)

    @property
    def sizes(self) -> np.ndarray:
        return self.ends - self.starts


def read_padding_meta(ds_dir: str | Path) -> dict[str, Any]:
    """padding.json of a stage-2 folder, with an error that says how to get one."""
    path = Path(ds_dir) / "padding.json"
    if not Path(ds_dir).is_dir():
        raise FileNotFoundError(f"dataset folder {ds_dir} does not exist; build it with "
                                "long_ctx/2_create_padded_data.py and pass its --output_dir as --ds_dir")
    if not path.is_file():
        raise FileNotFoundError(
            f"{ds_dir} has no padding.json, so it is not a padded dataset; run "
            f"long_ctx/2_create_padded_data.py --ds_dir {ds_dir} ... and pass the folder it "
            "writes (…_padded_<L>_…) as --ds_dir")
    try:
        meta = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-create the dataset with "
                         "long_ctx/2_create_padded_data.py") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a JSON object; re-create it with long_ctx/2_create_padded_data.py")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks {missing}; re-create it with long_ctx/2_create_padded_data.py")
    return meta


def shard_files(ds_dir: str | Path) -> list[Path]:
    """The parquet shards of a dataset folder, in row order (names sort as shard numbers)."""
    files = sorted(Path(ds_dir).glob("*.parquet")) or sorted(Path(ds_dir).glob("data/*.parquet"))
    if not files:
        raise FileNotFoundError(f"no parquet shards in {ds_dir}; re-run long_ctx/2_create_padded_data.py")
    return files


def _open_shard(f: Path) -> pq.ParquetFile:
    try:
        # Verifies page checksums where the writer stored them (pyarrow: write_page_checksum).
        return pq.ParquetFile(f, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{f} is not a readable parquet file ({str(exc)[:120]}); the shard is damaged — "
                         "re-create the dataset with long_ctx/2_create_padded_data.py") from None


def check_shards(ds_dir: str | Path, meta: dict[str, Any], files: list[Path]) -> dict[Path, pq.ParquetFile]:
    """Refuse a dataset whose shards are not the ones stage 2 wrote: a shard of `-of-N` missing
    or extra, one not in padding.json's `shards`, a row count other than its `num_rows`, a
    column missing or of another type. Returns the opened shards."""
    ds_dir = Path(ds_dir)
    redo = "re-create the dataset with long_ctx/2_create_padded_data.py"
    listed = meta.get("shards")
    if isinstance(listed, list) and listed:
        names = {f.name for f in files}
        missing = [n for n in listed if n not in names]
        extra = sorted(names - set(listed))
        if missing:
            raise ValueError(f"{ds_dir} is missing {', '.join(missing)} (padding.json lists {len(listed)} shards); "
                             f"restore the file(s) or {redo}")
        if extra:
            raise ValueError(f"{ds_dir} holds {', '.join(extra)}, which padding.json does not list; "
                             f"remove it or {redo}")
    numbered = [m for f in files if (m := SHARD_NAME_RE.match(f.name))]
    if numbered:
        counts = {int(m.group(3)) for m in numbered}
        if len(counts) > 1 or len(numbered) != len(files):
            raise ValueError(f"{ds_dir} mixes shards of different datasets ({', '.join(f.name for f in files)}); {redo}")
        n = counts.pop()
        have = {int(m.group(2)) for m in numbered}
        missing = [f"{numbered[0].group(1)}-{i:05d}-of-{n:05d}.parquet" for i in range(n) if i not in have]
        if missing:
            raise ValueError(f"{ds_dir} is missing {', '.join(missing)} (the shard names say there are {n}); "
                             f"restore the file(s) or {redo}")
    opened = {f: _open_shard(f) for f in files}
    pool = row_format(meta) == POOL
    required = POOL_COLUMNS if pool else REQUIRED_COLUMNS
    lists = ("input_ids", "cls_positions", "labels") if pool else ("input_ids",)
    for f, pf in opened.items():
        schema = pf.schema_arrow
        missing_cols = [c for c in required if c not in schema.names]
        if missing_cols:
            what = "pool rows (padding.json says row_format pool)" if pool else "stage-2 output"
            raise ValueError(f"{f} lacks columns {missing_cols}; it is not {what} — {redo}")
        for c in lists:
            t = schema.field(c).type
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_integer(t.value_type):
                raise ValueError(f"{f}: column {c} is {t}, not a list of integers — {redo}")
        for c in required:
            if c not in lists and not pa.types.is_integer(schema.field(c).type):
                raise ValueError(f"{f}: column {c} is {schema.field(c).type}, not integers — {redo}")
    if "num_rows" in meta:
        total = sum(pf.metadata.num_rows for pf in opened.values())
        if total != int(meta["num_rows"]):
            raise ValueError(f"{ds_dir}: the shards hold {total} rows but padding.json says {meta['num_rows']}; "
                             f"a shard was replaced or cut — {redo}")
    return opened


def row_format(meta: dict[str, Any]) -> str:
    """"pool" for pool rows, else "passage" (padding.json's `row_format`; older ones describe passage rows)."""
    return POOL if meta.get("row_format") == POOL else "passage"


def load_padded_dataset(ds_dir: str | Path, progress: bool = True) -> PaddedRows:
    """Read and validate every shard; keep only the real tokens of each row."""
    meta = read_padding_meta(ds_dir)
    L, cls_id = int(meta["max_length"]), int(meta["cls_token_id"])
    pool = row_format(meta) == POOL
    shards = check_shards(ds_dir, meta, shard_files(ds_dir))
    toks, lens, labs, grps = [], [], [], []
    scores: dict[str, list] = {"n": [], "pos": [], "labels": []}
    bar = progress_bar(total=sum(pf.metadata.num_rows for pf in shards.values()), unit="row",
                       desc="loading rows", disable=not progress)
    for f, pf in shards.items():
        try:
            for batch in pf.iter_batches(batch_size=4096 if not pool else 64,
                                         columns=list(POOL_COLUMNS if pool else REQUIRED_COLUMNS)):
                if pool:
                    _add_pool_batch(f, batch, L, cls_id, toks, lens, grps, scores)
                else:
                    _add_batch(f, batch, L, cls_id, toks, lens, labs, grps)
                bar.update(batch.num_rows)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{f} cannot be read ({str(exc)[:120]}); the shard is damaged — re-create the "
                             "dataset with long_ctx/2_create_padded_data.py") from None
    bar.close()
    lengths = np.concatenate(lens) if lens else np.zeros(0, np.int64)
    groups = np.concatenate(grps) if grps else np.zeros(0, np.int64)
    extra: dict[str, Any] = {}
    if pool:
        n_scores = np.concatenate(scores["n"]) if scores["n"] else np.zeros(0, np.int64)
        extra["score_offsets"] = np.concatenate([[0], np.cumsum(n_scores)]).astype(np.int64)
        extra["score_pos"] = np.concatenate(scores["pos"]) if scores["pos"] else np.zeros(0, np.int64)
        extra["score_labels"] = np.concatenate(scores["labels"]) if scores["labels"] else np.zeros(0, np.int8)
        labels = np.ones(lengths.size, np.int8)  # every pool row holds its question's positive
    else:
        labels = np.concatenate(labs) if labs else np.zeros(0, np.int8)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{ds_dir}: labels must be 0 or 1")
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = PaddedRows(tokens=np.concatenate(toks) if toks else np.zeros(0, np.uint16),
                      offsets=offsets, lengths=lengths, labels=labels, groups=groups, meta=meta, **extra)
    group_spans(rows)  # validates that groups are consecutive
    return rows


def _add_batch(f: Path, batch: pa.RecordBatch, L: int, cls_id: int, toks: list, lens: list, labs: list,
               grps: list) -> None:
    n = batch.num_rows
    flat = batch.column("input_ids").flatten().to_numpy(zero_copy_only=False)
    if flat.size != n * L:
        raise ValueError(f"{f}: rows are not all {L} tokens long as padding.json says; "
                         "re-create the dataset with long_ctx/2_create_padded_data.py")
    ids = flat.reshape(n, L)  # [n, L]
    length = batch.column("length").to_numpy(zero_copy_only=False).astype(np.int64)
    if length.min(initial=1) < 1 or length.max(initial=1) > L:
        raise ValueError(f"{f}: a `length` is outside 1..{L}")
    if n and not np.all(ids[np.arange(n), length - 1] == cls_id):
        bad = int(np.flatnonzero(ids[np.arange(n), length - 1] != cls_id)[0])
        raise ValueError(f"{f}: row {bad} of a batch has no CLS ({cls_id}) at length-1; the "
                         "dataset does not match its padding.json")
    keep = np.arange(L)[None, :] < length[:, None]  # [n, L] real-token mask
    toks.append(ids[keep])
    lens.append(length)
    labs.append(batch.column("labels").to_numpy(zero_copy_only=False).astype(np.int8))
    grps.append(batch.column("group").to_numpy(zero_copy_only=False).astype(np.int64))


def _add_pool_batch(f: Path, batch: pa.RecordBatch, L: int, cls_id: int, toks: list, lens: list, grps: list,
                    scores: dict[str, list]) -> None:
    """Validate a batch of pool rows against padding.json and keep their real tokens and CLS labels."""
    redo = "the dataset does not match its padding.json; re-create it with long_ctx/2_create_padded_data.py"
    n = batch.num_rows
    flat = batch.column("input_ids").flatten().to_numpy(zero_copy_only=False)
    if flat.size != n * L:
        raise ValueError(f"{f}: rows are not all {L} tokens long as padding.json says; {redo}")
    ids = flat.reshape(n, L)  # [n, L]
    length = batch.column("length").to_numpy(zero_copy_only=False).astype(np.int64)
    if length.min(initial=2) < 2 or length.max(initial=2) > L:
        raise ValueError(f"{f}: a `length` is outside 2..{L}")
    pos_col, lab_col = batch.column("cls_positions"), batch.column("labels")
    counts = np.diff(pos_col.offsets.to_numpy()).astype(np.int64)  # [n] documents per row
    if not np.array_equal(counts, np.diff(lab_col.offsets.to_numpy())):
        raise ValueError(f"{f}: a row has not one label per CLS position (cls_positions and labels differ in length)")
    if n and counts.min() < 1:
        raise ValueError(f"{f}: a pool row has no CLS position; {redo}")
    pos = pos_col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)  # [S]
    lab = lab_col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)  # [S]
    row = np.repeat(np.arange(n), counts)  # [S] row of each score
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n else np.zeros(0, np.int64)
    ends = starts + counts - 1
    first, last = np.zeros(pos.size, bool), np.zeros(pos.size, bool)
    first[starts], last[ends] = True, True
    bad = (pos < 1) | (pos >= length[row]) | (~first & (pos <= np.concatenate([[-1], pos[:-1]])))
    bad |= last & (pos != length[row] - 1)
    if bad.any():
        r = int(row[np.flatnonzero(bad)[0]])
        raise ValueError(f"{f}: row {r} of a batch has CLS positions that are not increasing within 1..length-1 with "
                         f"the last at length-1; {redo}")
    if pos.size and not np.all(ids[row, pos] == cls_id):
        r = int(row[np.flatnonzero(ids[row, pos] != cls_id)[0]])
        raise ValueError(f"{f}: row {r} of a batch has no CLS ({cls_id}) at one of its cls_positions; {redo}")
    if not np.isin(lab, (0, 1)).all() or not np.array_equal(np.bincount(row, weights=lab, minlength=n), np.ones(n)):
        raise ValueError(f"{f}: every pool row needs labels of 0/1 with exactly one 1 (its gold document); {redo}")
    keep = np.arange(L)[None, :] < length[:, None]  # [n, L] real-token mask
    toks.append(ids[keep])
    lens.append(length)
    grps.append(batch.column("group").to_numpy(zero_copy_only=False).astype(np.int64))
    scores["n"].append(counts)
    scores["pos"].append(pos)
    scores["labels"].append(lab.astype(np.int8))


def dataset_fingerprint(rows: PaddedRows) -> dict[str, Any]:
    """What identifies the training data for a resume: special ids, row length, counts and a hash
    of every real token, length, label and group (blake2b: 550 MB/s measured on the shared 2-core
    machine, ~2 s per GB of real tokens at every start)."""
    h = hashlib.blake2b(digest_size=16)
    arrays = [rows.tokens, rows.lengths, rows.labels, rows.groups]
    if rows.is_pool:  # (passage rows hash what they always did, so older checkpoints still match)
        arrays += [rows.score_offsets, rows.score_pos, rows.score_labels]
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(arr.dtype.str.encode())
        h.update(memoryview(arr).cast("B"))
    meta = rows.meta
    return {"sep_token_id": int(meta["sep_token_id"]), "cls_token_id": int(meta["cls_token_id"]),
            "pad_token_id": int(meta["pad_token_id"]), "max_length": int(meta["max_length"]),
            "rows": rows.n_rows, "blake2b": h.hexdigest(), **({"row_format": POOL} if rows.is_pool else {})}


def group_spans(rows: PaddedRows) -> GroupSpans:
    """Row ranges of each group; an error if a group's rows are not consecutive."""
    g = rows.groups
    if g.size == 0:
        z = np.zeros(0, np.int64)
        return GroupSpans(z, z, z)
    change = np.flatnonzero(g[1:] != g[:-1]) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    ends = np.concatenate([change, [g.size]]).astype(np.int64)
    if np.unique(g[starts]).size != starts.size:
        raise ValueError("rows of a group are not consecutive; the dataset was not written by "
                         "long_ctx/2_create_padded_data.py (or was shuffled afterwards)")
    max_len = np.maximum.reduceat(rows.lengths, starts) if starts.size else starts
    return GroupSpans(starts, ends, max_len.astype(np.int64))


def split_groups(n_groups: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Group indices (sorted) for training and for evaluation; no group is in both.

    At least one group is held out whenever eval_fraction > 0 and there are 2+ groups, so a
    small dataset still gets an evaluation.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"--eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = int(round(eval_fraction * n_groups))
    if eval_fraction > 0 and n_groups >= 2:
        n_eval = min(max(n_eval, 1), n_groups - 1)
    perm = np.random.default_rng([seed, 0x5E1]).permutation(n_groups)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def plan_epoch(spans: GroupSpans, lengths: np.ndarray, train_groups: np.ndarray, bs: int,
               seed: int, epoch: int, whole_groups: bool, group_by_length: bool) -> list[np.ndarray]:
    """This epoch's micro-batches for all processes together, as arrays of row indices.

    - default: rows shuffled individually, batches of `bs` rows;
    - group_by_length: groups shuffled, sorted by their longest row inside mega-batches of
      ~50 batches, then cut into `bs` rows with each group's rows kept adjacent; the batch with
      the longest row goes first so an out-of-memory shows up at step 1, not hours in;
    - whole_groups (grouped loss): whole groups packed into batches of at most `bs` rows
      (combined with group_by_length, the groups are length-sorted first).
    `lengths` [N] are the rows' real lengths.
    """
    rng = np.random.default_rng([seed, epoch])
    sizes = spans.sizes[train_groups]
    if whole_groups and sizes.size and sizes.max() > bs:
        raise ValueError(f"a group has {int(sizes.max())} rows but --bs is {bs}; the grouped loss needs "
                         f"a whole group per batch: use --bs {int(sizes.max())} or more")
    if whole_groups or group_by_length:
        order = train_groups[rng.permutation(train_groups.size)]
        units = [np.arange(spans.starts[g], spans.ends[g]) for g in order]
        unit_len = spans.max_len[order]
    else:
        rows = _rows_of(spans, train_groups)
        flat = rows[rng.permutation(rows.size)]
        return [flat[i:i + bs].astype(np.int64) for i in range(0, flat.size, bs)]
    if group_by_length and units:
        mean_size = max(1.0, float(np.mean([u.size for u in units])))
        per_mega = max(1, int(math.ceil(MEGA_BATCH_MULT * bs / mean_size)))
        ordered: list[np.ndarray] = []
        for i in range(0, len(units), per_mega):
            # Stable sort by descending length keeps the shuffled order among equal lengths.
            for j in np.argsort(-unit_len[i:i + per_mega], kind="stable"):
                ordered.append(units[i + j])
        units = ordered
    batches: list[np.ndarray] = []
    if whole_groups:
        cur: list[np.ndarray] = []
        n_cur = 0
        for u in units:
            if n_cur + u.size > bs and cur:
                batches.append(np.concatenate(cur))
                cur, n_cur = [], 0
            cur.append(u)
            n_cur += u.size
        if cur:
            batches.append(np.concatenate(cur))
    else:
        flat = np.concatenate(units) if units else np.zeros(0, np.int64)
        batches = [flat[i:i + bs] for i in range(0, flat.size, bs)]
    if group_by_length and len(batches) > 1:
        longest = int(np.argmax([lengths[b].max() for b in batches]))
        batches.insert(0, batches.pop(longest))
    return [b.astype(np.int64) for b in batches]


def _rows_of(spans: GroupSpans, group_idx: np.ndarray) -> np.ndarray:
    """Row indices of the given groups, in file order."""
    if group_idx.size == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(spans.starts[g], spans.ends[g]) for g in group_idx])


def shard_for_rank(batches: list[np.ndarray], rank: int, world_size: int) -> list[np.ndarray]:
    """Process `rank`'s micro-batches: every world_size-th, after dropping the tail that would
    give some process one batch more (DDP needs the same number of steps on every process)."""
    usable = (len(batches) // world_size) * world_size
    return batches[rank:usable:world_size]


def plan_eval(spans: GroupSpans, lengths: np.ndarray, eval_groups: np.ndarray, bs: int) -> list[np.ndarray]:
    """Evaluation batches: the held-out rows sorted by length (least padding), `bs` rows each.

    Metrics are computed on all scores at the end, so groups need not stay within a batch.
    """
    rows = _rows_of(spans, eval_groups)
    rows = rows[np.argsort(lengths[rows], kind="stable")]
    return [rows[i:i + bs] for i in range(0, rows.size, bs)]


def score_index(rows: PaddedRows, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where the scores of rows `idx` are read and what they are compared with:
    (row in the batch [S], position [S], label [S], group [S]).

    Passage rows: one score per row at length-1, its label and group. Pool rows: one per CLS, the
    document's label, and as group the row's index in the dataset (a row is one softmax group).
    """
    idx = np.asarray(idx, dtype=np.int64)
    if not rows.is_pool:
        return (np.arange(idx.size, dtype=np.int64), rows.lengths[idx] - 1, rows.labels[idx].astype(np.int64),
                rows.groups[idx].astype(np.int64))
    a, b = rows.score_offsets[idx], rows.score_offsets[idx + 1]
    counts = b - a
    src = np.repeat(a - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(int(counts.sum()))
    in_batch = np.repeat(np.arange(idx.size, dtype=np.int64), counts)
    return in_batch, rows.score_pos[src], rows.score_labels[src].astype(np.int64), idx[in_batch]


def collate(rows: PaddedRows, idx: np.ndarray, width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch of the given rows, with where to read each score (`score_index`).

    width None trims to the longest real row in the batch: rows are right-padded and the model
    is causal, so the scores (at length-1, or at every CLS) are exactly those of the full-width batch.
    """
    lens = rows.lengths[idx]
    T = int(lens.max()) if width is None else int(width)
    ids = np.full((idx.size, T), rows.pad_token_id, dtype=np.int64)  # [B, T]
    for j, i in enumerate(idx):
        ids[j, :lens[j]] = rows.row(int(i))
    score_rows, score_pos, labels, groups = score_index(rows, idx)
    return {
        "input_ids": torch.from_numpy(ids),
        "lengths": torch.from_numpy(lens.astype(np.int64)),
        "score_rows": torch.from_numpy(score_rows),  # [S] row in the batch of each score
        "score_pos": torch.from_numpy(score_pos.astype(np.int64)),  # [S] its position in the row
        "labels": torch.from_numpy(labels),  # [S]
        "groups": torch.from_numpy(groups),  # [S]
    }


class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole, already planned batches (DataLoader batch_size=None)."""

    def __init__(self, rows: PaddedRows, batches: list[np.ndarray], width: int | None = None):
        self.rows, self.batches, self.width = rows, batches, width

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return collate(self.rows, self.batches[i], self.width)
