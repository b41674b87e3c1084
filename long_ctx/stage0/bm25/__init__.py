"""BM25 bit-identical to `rank_bm25.BM25Okapi`, vectorised: `scoring` (the scores and the two
tokenizer definitions), `term_index` (per-pool term statistics) and `codepoints` (numpy views of
the text that make tokenizing and lowercasing fast). Pure functions of their inputs; imports
nothing from the project outside this folder.

    from long_ctx.stage0.bm25 import bm25_scores, rank_documents
"""
from long_ctx.stage0.bm25.scoring import (TOKENIZERS, bm25_scores, get_tokenizer, index_documents, rank_documents,
                                          scores_from_index, tokenize_whitespace, tokenize_words)

__all__ = ["TOKENIZERS", "bm25_scores", "get_tokenizer", "index_documents", "rank_documents", "scores_from_index",
           "tokenize_whitespace", "tokenize_words"]
