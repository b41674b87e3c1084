"""Rerank documents for a query with a trained cross-encoder (base RWKV-5 + LoRA adapter).

    from cross_encoder.serving.reranker import Reranker
    rr = Reranker.from_pretrained("base.pth", "OUT/final")      # loads base + adapter once
    scores = rr.score("who built the tower", ["doc a", "doc b"])  # list[float], input order
    best = rr.rank("who built the tower", ["doc a", "doc b"])    # [(index, score), ...] best first

Every (query, document) pair is scored in the training row format
`question + [SEP] + document + [CLS]` (`long_ctx.stage2.build_row`, special ids and max_length
from the adapter's `cross_encoder_config.json`, too-long documents cut at the tail), with the score
read at the CLS. One difference from stage 2: a query longer than QUERY_SHARE of the row
(`max_query_tokens(max_length)` = half of max_length - 2) keeps only its first that many tokens,
so every document keeps room (stage 2 keeps the whole question and cuts the document, to nothing
for a question as long as the row, which would give every document the same score). Such queries
are counted in `queries_cut` and warned about once (`QueryCutWarning`).

Pool adapters (trained on stage 2's pool rows, `row_format: "pool"` in their config) are scored
in that format, transparently behind the same calls: a query's documents, in the order given,
are cut into windows of at most `pool_window` documents (default: the training K; all when K
was 0) and `max_length` tokens, each `question + [SEP] + d_1 + [CLS] + ... + d_k + [CLS]`
(`long_ctx.stage2.pool_rows.build_pool_row`), one pass per window, the score of each document
read at its CLS. A document too long for a window alone loses its tail. Scores then depend on
the order of the documents and on what shares their window (`windows` says which do).

Speed: RWKV is recurrent and every row of a query starts with the same `question + [SEP]`, so
that prefix runs once and each document continues from a copy of its state (the batched form of
`rwkv5.expand_state`), in batches of documents of similar length, which may mix the pools of
several queries (`score_many`) so that small pools still fill a batch. This gives the same scores as scoring every full row
on its own (`score_ids_per_pair`, kept for tests and benchmarks) up to float rounding.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cross_encoder.runtime import default_dtype, resolve_device, resolve_dtype
from long_ctx.stage2 import build_row
from long_ctx.stage2.pool_rows import build_pool_row

DEFAULT_BATCH_SIZE = 32
# Upper bound on documents x padded suffix length per forward pass; keeps activation memory flat
# for long documents (the FFN alone holds batch x tokens x 3.5 n_embd floats).
DEFAULT_MAX_BATCH_TOKENS = 32_768
#: The share of a row's max_length - 2 (question + document) tokens a query may take at most.
QUERY_SHARE = 0.5


def max_query_tokens(max_length: int) -> int:
    """Query tokens kept in a row of `max_length` (the rest of a longer query is cut)."""
    return int((max_length - 2) * QUERY_SHARE)


def default_pool_window(ce_config: dict) -> int | None:
    """Documents per scoring window of a pool adapter: its training K (`pool.pool_docs`), None
    (all) when K was 0, and when K is not recorded the most documents a training row held."""
    pool = ce_config.get("pool") or {}
    k = pool.get("pool_docs")
    if isinstance(k, int) and not isinstance(k, bool) and k >= 0:
        return k or None
    most = (pool.get("documents_per_row") or {}).get("max")
    return int(most) if isinstance(most, int) and most > 0 else None


class QueryCutWarning(UserWarning):
    """A query was longer than `max_query_tokens` and lost its tail (emitted once per Reranker)."""


class Reranker:
    """Scores documents against a query with a cross-encoder; see the module docstring."""

    def __init__(self, model: torch.nn.Module, ce_config: dict, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_length: int | None = None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 tokenizer=None, pool_window: int | None = None) -> None:
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(f"batch_size and max_batch_tokens must be >= 1, got {batch_size}, {max_batch_tokens}")
        self.model = model.eval()
        self.ce_config = ce_config
        try:
            self.sep = int(ce_config["sep_token_id"])
            self.cls = int(ce_config["cls_token_id"])
            self.pad = int(ce_config["pad_token_id"])
        except KeyError as exc:
            raise ValueError(f"cross_encoder_config.json lacks {exc}; was the adapter written by "
                             "cross_encoder/1_peft_training_ce.py?") from None
        self.max_length = int(max_length or ce_config["max_length"])
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3 (question, SEP, CLS), got {self.max_length}")
        self.max_query_tokens = max_query_tokens(self.max_length)
        #: "pool" for an adapter trained on pool rows (scored in windows), else "passage".
        self.row_format = "pool" if ce_config.get("row_format") == "pool" else "passage"
        if pool_window is not None and pool_window < 0:
            raise ValueError(f"pool_window must be >= 0 (0: all documents in one window), got {pool_window}")
        #: Pool adapters: documents per window at most (None: as many as max_length allows).
        self.pool_window = (default_pool_window(ce_config) if pool_window is None else pool_window or None) \
            if self.row_format == "pool" else None
        self.queries_cut = 0  # queries scored that were longer than max_query_tokens
        self._warned = False
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = next(model.parameters()).device
        if tokenizer is None:
            from long_ctx.world_tokenizer import get_tokenizer

            tokenizer = get_tokenizer()
        self.tokenizer = tokenizer

    @classmethod
    def from_flags(cls, flags) -> "Reranker":
        """Load from the evaluate/rerank scripts' config (see cross_encoder.cli_flags)."""
        return cls.from_pretrained(flags.model_file, flags.adapter, device=flags.device,
                                   dtype=resolve_dtype(flags.precision, flags.device),
                                   batch_size=flags.batch_size, max_length=flags.max_length,
                                   max_batch_tokens=flags.max_batch_tokens,
                                   pool_window=getattr(flags, "pool_window", None))

    @classmethod
    def from_pretrained(cls, model_file: str | Path, adapter_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                        max_length: int | None = None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                        pool_window: int | None = None) -> "Reranker":
        """Load the base checkpoint and the adapter (a checkpoint folder, or a training output
        folder: its best/, else final/, else newest checkpoint) once, LoRA merged into the weights.

        dtype None: fp32 on CPU, bf16 on CUDA. max_length None: the training rows' length.
        pool_window (pool adapters): documents per window; None: the training K; 0: all.
        """
        from cross_encoder.modeling import load_cross_encoder  # imports peft: only when loading

        dev = resolve_device(device)
        model, ce_config = load_cross_encoder(model_file, adapter_dir, device=dev, dtype=dtype or default_dtype(dev))
        return cls(model, ce_config, batch_size=batch_size, max_length=max_length,
                   max_batch_tokens=max_batch_tokens, pool_window=pool_window)

    # ------------------------------------------------------------------ text API
    def encode(self, query: str, documents: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """RWKV World token ids of the query and of every document."""
        return self.tokenizer.encode(query), self.tokenizer.encode_batch(list(documents))

    def score(self, query: str, documents: Sequence[str]) -> list[float]:
        """One relevance score per document, in input order (higher = more relevant)."""
        q, docs = self.encode(query, documents)
        return self.score_ids(q, docs).tolist()

    def score_many(self, pools: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """`score` for several (query, documents) pools, batched together (faster for small pools)."""
        tok = self.tokenizer
        items = [(tok.encode(q), tok.encode_batch(list(docs))) for q, docs in pools]
        return [s.tolist() for s in self.score_ids_many(items)]

    def rank(self, query: str, documents: Sequence[str]) -> list[tuple[int, float]]:
        """(document index, score) pairs, best first; ties go to the lower index."""
        scores = self.score(query, documents)
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return [(int(i), scores[i]) for i in order]

    # ------------------------------------------------------------------ rows
    def kept_query(self, question_ids: Sequence[int]) -> Sequence[int]:
        """The part of a query that goes into its rows: its first `max_query_tokens` tokens."""
        return question_ids[:self.max_query_tokens] if len(question_ids) > self.max_query_tokens else question_ids

    def _count_cut(self, question_ids: Sequence[int]) -> None:
        if len(question_ids) <= self.max_query_tokens:
            return
        self.queries_cut += 1
        if not self._warned:
            self._warned = True
            warnings.warn(f"a query of {len(question_ids)} tokens is longer than {self.max_query_tokens} "
                          f"(half of the row's {self.max_length} - 2): only its first {self.max_query_tokens} "
                          "tokens are scored, so the documents keep room; Reranker.queries_cut counts such queries",
                          QueryCutWarning, stacklevel=3)

    def fits(self, question_ids: Sequence[int], doc_ids: Sequence[int]) -> bool:
        """Whether the pair is scored whole: the query within `max_query_tokens` and query + SEP +
        document + CLS within `max_length` (otherwise `row` cuts the query's or document's tail)."""
        return (len(question_ids) <= self.max_query_tokens
                and len(question_ids) + len(doc_ids) + 2 <= self.max_length)

    def row(self, question_ids: Sequence[int], doc_ids: Sequence[int]) -> list[int]:
        """The row of one pair without its padding: the training row (`build_row(...)[:length]`)
        of the kept query (`kept_query`) and the document."""
        # A max_length of exactly the needed length gives the untruncated row with no padding;
        # past max_length build_row truncates and then fills the row completely. Either way
        # this is the training row up to its length, without building padding to throw away.
        # (build_row wants max_length >= 3; an empty question and document need only 2.)
        question_ids = self.kept_query(question_ids)
        needed = max(3, len(question_ids) + len(doc_ids) + 2)
        row, length, _ = build_row(question_ids, doc_ids, min(needed, self.max_length), self.sep, self.cls,
                                   self.pad, truncate=True)
        return row[:length]

    def prefix_length(self, question_ids: Sequence[int]) -> int:
        """Tokens shared by every row of this question: the kept question plus SEP."""
        return min(len(question_ids), self.max_query_tokens) + 1

    @property
    def is_pool(self) -> bool:
        return self.row_format == "pool"

    def windows(self, question_ids: Sequence[int], documents_ids: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """The [a, b) document ranges scored together: for a pool adapter, consecutive documents,
        a new window whenever `pool_window` documents or `max_length` tokens would be exceeded
        (greedy from the first document, so a window boundary stays one when the documents after
        it are scored on their own); for a passage adapter every document alone."""
        n = len(documents_ids)
        if not self.is_pool:
            return [(i, i + 1) for i in range(n)]
        room = self.max_length - self.prefix_length(question_ids)  # documents + their CLS
        cap = self.pool_window or n
        out, a, used = [], 0, 0
        for i, d in enumerate(documents_ids):
            cost = min(len(d), room - 1) + 1
            if i > a and (i - a >= cap or used + cost > room):
                out.append((a, i))
                a, used = i, 0
            used += cost
        if n:
            out.append((a, n))
        return out

    def window_row(self, question_ids: Sequence[int], documents_ids: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
        """(ids, CLS positions) of one pool window without padding: the pool row of the kept query
        and the documents, each cut to what fits in a window alone."""
        q = self.kept_query(question_ids)
        room = self.max_length - len(q) - 1
        docs = [d[:room - 1] for d in documents_ids]
        needed = max(3, len(q) + 1 + sum(len(d) + 1 for d in docs))
        if needed > self.max_length:
            raise ValueError(f"{len(docs)} documents need {needed} tokens, over max_length {self.max_length}; "
                             "cut the pool with windows() first")
        row = build_pool_row(q, docs, 0, needed, self.sep, self.cls, self.pad, truncate=False)
        return row.ids[:row.length].tolist(), row.cls_positions

    def tokens_read(self, question_ids: Sequence[int], documents_ids: Sequence[Sequence[int]]) -> int:
        """Query and document tokens the model reads to score these documents, without SEP/CLS:
        the query once per row (passage adapters: per document; pool adapters: per window)."""
        if not self.is_pool:
            return sum(len(self.row(question_ids, d)) - 2 for d in documents_ids)
        total = 0
        for a, b in self.windows(question_ids, documents_ids):
            ids, positions = self.window_row(question_ids, documents_ids[a:b])
            total += len(ids) - 1 - len(positions)
        return total

    # ------------------------------------------------------------------ scoring
    def score_ids(self, question_ids: Sequence[int], documents_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """float64 [n_docs] scores with prefix-state reuse (see module docstring)."""
        return self.score_ids_many([(question_ids, documents_ids)])[0]

    @torch.inference_mode()
    def score_ids_many(self, items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> list[np.ndarray]:
        """Scores of several (question ids, documents ids) pools at once: each question's prefix
        runs once, then documents of all the pools share length-sorted batches, each row starting
        from its own question's state. Fills batches when pools are small (10-30 documents).
        A pool adapter scores windows instead (`score_windows_many`)."""
        if self.is_pool:
            return self.score_windows_many(items)
        states: list = []  # per question with documents: its batch-1 state after question + SEP
        owner: list[int] = []  # per document: index into `states`
        suffixes: list[list[int]] = []  # per document: document (maybe cut) + CLS; never empty
        slots: list[tuple[int, int]] = []  # per document: (pool, position in pool)
        for k, (q, docs) in enumerate(items):
            if not len(docs):
                continue
            self._count_cut(q)
            p = self.prefix_length(q)
            rows = [self.row(q, d) for d in docs]
            prefix = torch.tensor([rows[0][:p]], dtype=torch.long, device=self.device)  # [1, p]
            states.append(self.model.rwkv.hidden(prefix, return_state=True)[1])
            for j, r in enumerate(rows):
                owner.append(len(states) - 1)
                suffixes.append(r[p:])
                slots.append((k, j))
        out = [np.empty(len(docs)) for _, docs in items]
        if not suffixes:
            return out
        # Per layer, each state tensor stacked over questions: [n_questions, ...].
        stacked = [tuple(torch.cat(parts) for parts in zip(*layers)) for layers in zip(*states)]
        owner_t = torch.tensor(owner, dtype=torch.long, device=self.device)
        for batch in self._batches([len(s) for s in suffixes]):
            ids, lengths = self._pad([suffixes[i] for i in batch])  # [B, T], [B]
            rows_state = owner_t[batch]  # [B]
            # index_select copies, so the batch never writes into a question's saved state.
            state = [tuple(t.index_select(0, rows_state) for t in layer) for layer in stacked]
            scores = self._head(self.model.rwkv.hidden(ids, state=state), lengths)  # [B]
            for i, score in zip(batch, scores):
                k, j = slots[i]
                out[k][j] = score
        return out

    @torch.inference_mode()
    def score_windows_many(self, items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> list[np.ndarray]:
        """Pool adapters: every pool cut into `windows`, one pass per window (windows of all pools
        in length-sorted batches), each document's score read at its CLS."""
        out = [np.empty(len(docs)) for _, docs in items]
        built: list[tuple[int, int, list[int], list[int]]] = []  # (pool, first document, ids, CLS positions)
        for k, (q, docs) in enumerate(items):
            if not len(docs):
                continue
            self._count_cut(q)
            for a, b in self.windows(q, docs):
                built.append((k, a, *self.window_row(q, docs[a:b])))
        for batch in self._batches([len(w[2]) for w in built]):
            ids, _ = self._pad([built[i][2] for i in batch])  # [B, T]
            rows = torch.tensor([j for j, i in enumerate(batch) for _ in built[i][3]], device=self.device)  # [S]
            pos = torch.tensor([p for i in batch for p in built[i][3]], device=self.device)  # [S]
            h = self.model.rwkv.hidden(ids)  # [B, T, C]
            scores = self.model.score_hidden(h[rows, pos]).double().cpu().numpy()  # [S]
            at = 0
            for i in batch:
                k, a, _, positions = built[i]
                out[k][a:a + len(positions)] = scores[at:at + len(positions)]
                at += len(positions)
        return out

    @torch.inference_mode()
    def score_ids_per_pair(self, question_ids: Sequence[int], documents_ids: Sequence[Sequence[int]],
                           batch_size: int = 1) -> np.ndarray:
        """float64 [n_docs] scores, each pair's full padded training row scored on its own
        (`batch_size` rows at a time, in input order): the straightforward reference. For a pool
        adapter, each window's row padded to max_length, one at a time."""
        out = np.empty(len(documents_ids))
        if len(documents_ids):
            self._count_cut(question_ids)
        if self.is_pool:
            for a, b in self.windows(question_ids, documents_ids):
                ids, positions = self.window_row(question_ids, documents_ids[a:b])
                padded = torch.full((1, self.max_length), self.pad, dtype=torch.long)
                padded[0, :len(ids)] = torch.tensor(ids)
                h = self.model.rwkv.hidden(padded.to(self.device))[0]  # [max_length, C]
                out[a:b] = self.model.score_hidden(h[torch.tensor(positions)]).double().cpu().numpy()
            return out
        q = self.kept_query(question_ids)
        for a in range(0, len(documents_ids), batch_size):
            built = [build_row(q, d, self.max_length, self.sep, self.cls, self.pad, truncate=True)
                     for d in documents_ids[a:a + batch_size]]
            ids = torch.tensor([r for r, _, _ in built], dtype=torch.long)  # [B, max_length]
            lengths = torch.tensor([n for _, n, _ in built], dtype=torch.long)  # [B]
            out[a:a + len(built)] = self.model.score_rows(ids.to(self.device), lengths).double().cpu().numpy()
        return out

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Document indices grouped longest first, at most batch_size documents and
        max_batch_tokens padded tokens per batch (a single longer document still gets a batch)."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            # Sorted longest first, so the batch's padded width is its first document's length.
            if cur and (len(cur) >= self.batch_size or (len(cur) + 1) * lengths[cur[0]] > self.max_batch_tokens):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        for j, s in enumerate(seqs):
            ids[j, :len(s)] = torch.tensor(s, dtype=torch.long)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        return ids.to(self.device), lengths.to(self.device)

    def _head(self, h: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
        # h [B, T, C]; the CLS is each sequence's last real token (padding after it is never read:
        # the model is causal).
        return self.model.score_hidden(self.model.pool(h, lengths)).double().cpu().numpy()
