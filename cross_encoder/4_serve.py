"""Serve a trained cross-encoder over HTTP in the rerank APIs clients already speak.

    python cross_encoder/4_serve.py --model_file M.pth --adapter OUT/final [--port 8080]

POST /rerank (Hugging Face text-embeddings-inference), POST /v1/rerank (Cohere / Jina), GET /health,
GET /info. Documents of concurrent requests are scored together. SIGTERM or Ctrl+C stops accepting,
answers what is in flight and exits 0. Reference: docs/serving.md.
"""
from cross_encoder.serving.serve_config import config_from_args
from cross_encoder.serving.server import main
from long_ctx.common.cli import run_cli

if __name__ == "__main__":
    run_cli(main, config_from_args(description=__doc__))
