"""What every data stage (and the cross-encoder's scripts) shares: atomic files and folders, the
streaming `.jsonl[.zst]` line reader, the order-keeping bounded worker pool, parquet shards with
Hugging Face names, dataset cards, exact length statistics and their plots, and the one-line CLI
error convention. Modules here import only the standard library, third-party packages and each
other, never a stage or the cross-encoder.
"""
