"""RWKV-5 cross-encoder: model, LoRA trainer, evaluation and reranking."""
