"""Rerank {"query": ..., "documents": [...]} jsonl lines with a trained cross-encoder; writes scores + ranking per line."""
import argparse
import sys

from cross_encoder.rerank_cli import RerankConfig, main
from long_ctx.nq_reader import InputFileError

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model_file", required=True, help="base RWKV-5 .pth the adapter was trained on")
    p.add_argument("--adapter", required=True, help="adapter folder (OUT/final, OUT/checkpoint-<step>) or the training OUT folder")
    p.add_argument("--input_file", required=True, help='jsonl (or .jsonl.zst) of {"query": str, "documents": [str, ...]} lines; an "id" is copied')
    p.add_argument("--output_file", default=None, help="output jsonl, written atomically (default: <input>.reranked.jsonl beside the input)")
    p.add_argument("--batch_size", type=int, default=32, help="documents per forward pass")
    p.add_argument("--max_batch_tokens", type=int, default=32768, help="documents x padded length per forward pass at most (bounds memory)")
    p.add_argument("--question_batch", type=int, default=16, help="questions whose documents share forward passes (fills batches when pools are small)")
    p.add_argument("--max_length", type=int, default=None, help="row length limit; longer documents lose their tail (default: the training rows' max_length)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    a = p.parse_args()
    try:
        main(RerankConfig(model_file=a.model_file, adapter=a.adapter, input_file=a.input_file,
                          output_file=a.output_file, batch_size=a.batch_size, max_batch_tokens=a.max_batch_tokens,
                          question_batch=a.question_batch,
                          max_length=a.max_length, device=a.device, precision=a.precision,
                          progress=not a.no_progress))
    except (InputFileError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"error: {exc}")
