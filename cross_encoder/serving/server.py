"""The rerank HTTP server: FastAPI on uvicorn, the model behind a cross-request `Batcher`.

    POST /rerank      TEI:    {"query", "texts", "truncate", "raw_scores", "return_text"} -> [{"index", "score", "text"?}]
    POST /v1/rerank   Cohere: {"model"?, "query", "documents", "top_n"?, "return_documents"?}
                              -> {"id", "model", "results": [{"index", "relevance_score", "document"?}], "usage"}
    POST /v2/rerank   the same (where Cohere's v2 client posts)
    GET  /health      200 {"status": "ok"} once the model is loaded, 503 {"status": "loading"} before
    GET  /info        model, adapter, row format, special ids, limits, device, precision, version

The socket is bound first and the model loads in the worker thread, so `/health` answers while
it loads. Scores are `Reranker.score` (raw logits); `/rerank` returns their sigmoid unless
`raw_scores`, `/v1/rerank` always the sigmoid. Results are best first (ties to the lower index).
Every error is a JSON `{"error", "error_type"}` body, never a traceback (docs/serving.md lists them).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import math
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cross_encoder.runtime import resolve_device, resolve_dtype
from cross_encoder.serving.batcher import Batcher, NotReady, QueueFull
from cross_encoder.serving.reranker import Reranker
from cross_encoder.serving.schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    ErrorBody,
    TeiRank,
    TeiRerankRequest,
    TextDocument,
    Usage,
)
from cross_encoder.serving.serve_config import ServeConfig, default_torch_threads
from long_ctx.common.cli import UsageError

log = logging.getLogger("cross_encoder.serve")
ROW_FORMAT = "question [SEP] document [CLS]"
POOL_ROW_FORMAT = "question [SEP] d_1 [CLS] ... d_k [CLS] (pool windows)"
RETRY_AFTER = {"Retry-After": "1"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.headers = status, message, error_type, headers


def error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type, **extra}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is a 413 before anything parses it, by its
    Content-Length when it has one and by counting while reading when it streams without one.
    The app then gets the body it read (bounded by `max_bytes`) in one piece."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(int(declared), scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._reject(None, scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, declared: int | None, scope: dict, receive: Any, send: Any) -> None:
        size = f"is {declared:,} bytes" if declared is not None else "streams more bytes"
        await error_response(413, f"request body {size}; this server accepts at most {self.max_bytes:,} "
                             "(--max_request_bytes)", "payload_too_large")(scope, receive, send)


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def best_first(scores: np.ndarray) -> list[int]:
    """Document indices by descending score, ties to the lower index (as `Reranker.rank`)."""
    return np.argsort(-scores, kind="stable").tolist()


def _field_path(loc: Sequence[Any]) -> str:
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _validation_message(errors: Sequence[dict], content_type: str | None) -> str:
    if errors and errors[0].get("type") == "json_invalid":
        why = (errors[0].get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({why} at character {errors[0]['loc'][-1]})"
    if "json" not in (content_type or "").lower():
        return f"send the body as JSON with Content-Type: application/json (got {content_type or 'none'})"
    parts = [f"{_field_path(e['loc'])}: {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def prepare(reranker: Any, query: str, texts: list[str], truncate: bool, field: str,
            count_tokens: bool) -> tuple[list[int], list[list[int]], int]:
    """Token ids of the query and documents (Reranker's tokenizer), checked against the row limit
    unless `truncate`; plus, when asked, the tokens the model reads (`Reranker.tokens_read`: query +
    document per row, after cutting, without SEP/CLS; a pool adapter reads the query once per window). Runs in a thread: tokenizing 8 MB takes ~0.2 s."""
    q, docs = reranker.encode(query, texts)
    limit = reranker.max_length
    if not truncate:
        if len(q) > reranker.max_query_tokens:
            raise ApiError(413, f"query is {len(q)} tokens; the model keeps at most {reranker.max_query_tokens} "
                           f"(half of its row limit of {limit} - 2, so documents keep room); shorten it or send "
                           "\"truncate\": true", "payload_too_large")
        long_ = [i for i, d in enumerate(docs) if not reranker.fits(q, d)]
        if long_:
            i = long_[0]
            others = f" (also too long: {len(long_) - 1} more, e.g. {field}[{long_[1]}])" if len(long_) > 1 else ""
            raise ApiError(413, f"{field}[{i}] is too long: query {len(q)} + document {len(docs[i])} tokens + SEP + CLS "
                           f"= {len(q) + len(docs[i]) + 2} tokens, over the model's row limit of {limit}; shorten it "
                           f"or send \"truncate\": true{others}", "payload_too_large")
    tokens = reranker.tokens_read(q, docs) if count_tokens else 0
    return q, docs, tokens


def create_app(config: ServeConfig, batcher: Batcher, info: dict[str, Any]) -> Any:
    """The ASGI app (FastAPI wrapped in BodyLimit); `batcher` is started and stopped by its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop)

    app = FastAPI(title="long-ctx-reranker", version=info["version"], lifespan=lifespan,
                  responses={code: {"model": ErrorBody} for code in (413, 422, 503)})

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.error_type, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return error_response(422, _validation_message(errors, request.headers.get("content-type")),
                              "validation", detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        return error_response(exc.status_code, str(exc.detail), kind, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log", "backend")

    def check_count(n: int, field: str) -> None:
        if n > config.max_docs_per_request:
            raise ApiError(413, f"{field} holds {n:,} documents; this server accepts at most "
                           f"{config.max_docs_per_request:,} per request (--max_docs_per_request)", "payload_too_large")

    async def score(query: str, texts: list[str], truncate: bool, field: str,
                    count_tokens: bool = False) -> tuple[np.ndarray, int]:
        try:
            batcher.acquire()
        except NotReady:
            raise ApiError(503, "the model is still loading; retry shortly (GET /health is 200 once ready)",
                           "unavailable", RETRY_AFTER) from None
        except QueueFull as exc:
            raise ApiError(503, f"the server is busy: {exc}; retry later", "overloaded", RETRY_AFTER) from None
        try:
            q, docs, tokens = await run_in_threadpool(prepare, batcher.reranker, query, texts, truncate, field,
                                                      count_tokens)
            return await batcher.submit(q, docs), tokens
        finally:
            batcher.release()

    @app.post("/rerank", response_model=list[TeiRank], response_model_exclude_none=True)
    async def rerank_tei(req: TeiRerankRequest) -> list[TeiRank]:
        check_count(len(req.texts), "texts")
        if not req.texts:
            return []
        scores, _ = await score(req.query, req.texts, req.truncate, "texts")
        return [TeiRank(index=i, score=float(scores[i]) if req.raw_scores else sigmoid(scores[i]),
                        text=req.texts[i] if req.return_text else None) for i in best_first(scores)]

    # /v2/rerank: where Cohere's v2 client (cohere.ClientV2) posts; the same body is accepted.
    @app.post("/v2/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True)
    @app.post("/v1/rerank", response_model=CohereRerankResponse, response_model_exclude_none=True)
    async def rerank_cohere(req: CohereRerankRequest) -> CohereRerankResponse:
        check_count(len(req.documents), "documents")
        scores, tokens = np.empty(0), 0
        if req.documents:  # Cohere's behaviour: long documents are cut, never refused
            scores, tokens = await score(req.query, req.documents, True, "documents", count_tokens=True)
        results = [CohereResult(index=i, relevance_score=sigmoid(scores[i]),
                                document=TextDocument(text=req.documents[i]) if req.return_documents else None)
                   for i in best_first(scores)[:req.top_n]]
        return CohereRerankResponse(id=str(uuid.uuid4()), model=config.model_name, results=results,
                                    usage=Usage(total_tokens=tokens))

    @app.get("/health")
    async def health() -> JSONResponse:
        if batcher.ready.is_set():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "loading"}, status_code=503, headers=RETRY_AFTER)

    @app.get("/info")
    async def server_info() -> dict[str, Any]:
        return {**info, "status": "ready" if batcher.ready.is_set() else "loading",
                "in_flight": batcher.in_flight(), "scored": dict(batcher.stats)}

    return BodyLimit(app, config.max_request_bytes)


class _Server(uvicorn.Server):
    """uvicorn's server, except that a graceful stop on SIGTERM/SIGINT exits with status 0: uvicorn
    (>= 0.29) re-raises the signal after its graceful shutdown, so the process would die of it."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)[0]
        # proto must say TCP: asyncio sets TCP_NODELAY only on sockets that do, and without it every
        # response on a kept-alive connection waits ~40 ms for a delayed ACK between headers and body.
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        return sock
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --host or --port") from None


def _version() -> str:
    try:
        return importlib.metadata.version("long-ctx-reranker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _log_config(level: str) -> dict:
    cfg = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    cfg["loggers"]["cross_encoder.serve"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return cfg


def main(config: ServeConfig) -> dict[str, Any]:
    """Serve until SIGTERM/SIGINT; returns a summary. Flag and path mistakes raise before binding;
    a model that fails to load stops the server and raises its error."""
    config.validate()
    if not Path(config.model_file).is_file():
        raise FileNotFoundError(f"--model_file {config.model_file} not found; pass the base RWKV-5 .pth the adapter was trained on")
    if not Path(config.adapter).is_dir():
        raise FileNotFoundError(f"--adapter {config.adapter} is not a folder; pass OUT/best, OUT/final, OUT/checkpoint-<step> or the training OUT folder")
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    threads = config.torch_threads or default_torch_threads()
    info: dict[str, Any] = {
        "model_id": config.model_name, "model_file": str(config.model_file), "adapter": str(config.adapter),
        "row_format": ROW_FORMAT, "device": str(device), "precision": "bf16" if dtype == torch.bfloat16 else "fp32",
        "version": _version(), "torch_threads": threads, "max_batch_docs": config.max_batch_docs,
        "max_batch_tokens": config.max_batch_tokens, "max_client_batch_size": config.max_docs_per_request,
        "max_request_bytes": config.max_request_bytes, "max_queue": config.max_queue,
        "batch_wait_ms": config.batch_wait_ms, "truncate_v1": True}

    def load() -> Reranker:
        from cross_encoder.modeling import load_ce_config, resolve_adapter_dir  # imports peft (slow)

        adapter_dir = resolve_adapter_dir(config.adapter)
        rr = Reranker.from_pretrained(config.model_file, adapter_dir, device=device, dtype=dtype,
                                      batch_size=config.max_batch_docs, max_length=config.max_length,
                                      max_batch_tokens=config.max_batch_tokens)
        ce = load_ce_config(adapter_dir)
        info.update(adapter=str(adapter_dir), adapter_step=ce.get("step"), model_shape=ce.get("model"),
                    special_ids={"sep": rr.sep, "cls": rr.cls, "pad": rr.pad}, max_length=rr.max_length,
                    max_input_length=rr.max_length)
        if rr.is_pool:  # scores depend on the documents' order and window (docs/serving.md)
            info.update(row_format=POOL_ROW_FORMAT, pool_window=rr.pool_window)
        return rr

    sock = _listen(config.host, config.port)
    server: _Server | None = None
    batcher = Batcher(load, config.max_batch_docs, config.batch_wait_ms, config.max_queue, threads,
                      on_fatal=lambda: setattr(server, "should_exit", True))
    server = _Server(uvicorn.Config(create_app(config, batcher, info), interface="asgi3", lifespan="on",
                                    log_config=_log_config(config.log_level), log_level=config.log_level,
                                    access_log=config.access_log))
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    print(f"serving {config.model_name} at {url} (POST /rerank, POST /v1/rerank; GET /health is 200 once "
          f"the model is loaded)", flush=True)
    start = time.perf_counter()
    server.run(sockets=[sock])
    if batcher.load_error is not None:
        raise batcher.load_error
    summary = {**batcher.stats, "uptime_s": round(time.perf_counter() - start, 1)}
    print(f"stopped: {summary['requests']:,} requests, {summary['documents']:,} documents scored in "
          f"{summary['batches']:,} batches; up {summary['uptime_s']} s", flush=True)
    return summary
