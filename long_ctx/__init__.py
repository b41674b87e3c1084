"""Data stages: NQ multi-document records -> question/positive/negatives -> token ids -> padded rows.

The numbered scripts here are the stages' command lines; each is a thin wrapper over `main(config)`
of its subpackage: `stage0/` (NQ parsing, BM25, negatives), `stage1/` (RWKV World token ids in
parquet), `stage2/` (fixed-length rows). `common/` holds what every stage shares (atomic outputs,
the streaming line reader, the ordered worker pool, parquet shards, dataset cards, length stats,
one-line CLI errors) and `world_tokenizer` the tokenizer. Data stages never import
`cross_encoder`; the cross-encoder imports them (row format, parser, BM25, tokenizer).
"""
