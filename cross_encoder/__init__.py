"""The RWKV-5 cross-encoder: the numbered scripts (train, evaluate, rerank) over importable
`main(config)`s. `rwkv5/` is the language model itself; `modeling/` the cross-encoder on top of it
(score head, LoRA, adapter folders and loading); `training/` the LoRA trainer; `evaluation/` the
comparison with BM25 on raw pools; `serving/` the `Reranker` API and the rerank CLI. `runtime`
picks device, precision and (under torchrun) the process group; `cli_flags` holds flags the
scripts share; `demo` runs the whole product on the bundled sample. Lower layers never import
higher ones (rwkv5 < modeling < serving < evaluation, modeling < training); any of them may
import the data stages in `long_ctx`.
"""
