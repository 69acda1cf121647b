"""The FastAPI app. Endpoints:

    GET  /v2                                      Open Inference Protocol (KServe v2) server metadata
    GET  /v2/health/live, /v2/health/ready        health
    GET  /v2/models/{name}, /v2/models/{name}/ready   model metadata and readiness
    POST /v2/models/{name}/infer                  JSON tensors in, logits and probabilities out
    POST /v1/predict?top_k=5                      image files (multipart field `file`) in, top-k out
    GET  /metrics                                 Prometheus
    GET  /                                        a web page to classify dropped images

The model is warmed up in the background after start: live at once, ready (and inference
served) once every batch size is compiled, which one log line announces. The model answers to
its own name and to ALIAS.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import pathlib
import time
import urllib.parse

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jaxcifar.serve import protocol
from jaxcifar.serve.batching import Batcher
from jaxcifar.serve.metrics import Metrics
from jaxcifar.serve.model import ServedModel, metadata, softmax
from jaxcifar.serve.protocol import ApiError

PAGE = pathlib.Path(__file__).with_name("static") / "index.html"
PAGE_MODEL_NAME = "{{model_name}}"  # in the page's <meta name="jaxcifar-model">
# The name every served model also answers to: the only name before models were named after
# their folder, so clients written then keep working.
ALIAS = "jaxcifar"
log = logging.getLogger("uvicorn.error")  # uvicorn's own log, so our lines read like its


def ready_line(model: ServedModel, url: str) -> str:
    """The line that says warm-up is over, and where to send requests."""
    return (f"Ready: model {model.name!r} (step {model.step}) classifies image files at POST {url}/v1/predict "
            f"and tensors at POST {url}/v2/models/{urllib.parse.quote(model.name)}/infer")


class Server:
    """The served model, its batcher and metrics, and whether warm-up has finished."""

    def __init__(self, model: ServedModel, url: str, max_batch: int, max_wait_s: float):
        self.model = model
        self.url = url
        self.metrics = Metrics(model, max_batch)
        self.batcher = Batcher(model.logits, model.image_shape, max_batch, max_wait_s, self.metrics.batch_size.observe)
        self.ready = False

    async def warm_up(self) -> None:
        try:
            await self.batcher.warm_up()
        except Exception:  # a background task's error would go unseen: log it; ready stays 503
            log.exception("Warm-up failed: the model cannot become ready")
            return
        log.info("%s", ready_line(self.model, self.url))  # before ready: whoever sees ready can read it
        self.ready = True
        self.metrics.ready.set(1)

    def require_model(self, name: str) -> ServedModel:
        if name not in (self.model.name, ALIAS):
            raise ApiError(404, f"Unknown model {name!r}; this server serves {self.model.name!r}.")
        return self.model

    def require_ready(self, name: str) -> ServedModel:
        model = self.require_model(name)
        if not self.ready:
            raise ApiError(503, "The model is still warming up; poll /v2/health/ready.")
        return model

    async def probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probabilities) of uint8 images, batched with other requests'; records the
        predictions for the drift metrics."""
        logits = await self.batcher.logits(images)
        probabilities = softmax(logits)
        self.metrics.observe_predictions(probabilities, self.model.class_names)
        return logits, probabilities


class BodyLimit:
    """413 for a request body over `max_bytes`: refused on its Content-Length before any is
    read, or, sent chunked without one, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = int(dict(scope["headers"]).get(b"content-length", 0))
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared > self.max_bytes:
                raise self.too_large(declared)
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large(received)
            return message

        await self.app(scope, limited_receive, send)

    def too_large(self, size: int) -> ApiError:
        return ApiError(413, f"Request body of {size}+ bytes is over this server's limit of {self.max_bytes} "
                             "(--max_body_bytes); send fewer images per request.")


class RequestMetrics:
    """Counts, times and gauges every HTTP request, labelled by its route template (not the
    raw path, whose unknown-model names would grow the label set without bound)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # what the client gets if the app raises before responding

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            self.metrics.in_flight.dec()


async def uploaded_files(request: Request) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file in the multipart form field `file`."""
    async with request.form() as form:
        uploads = form.getlist("file")
        if not uploads or any(isinstance(u, str) for u in uploads):
            raise ApiError(400, "Send the images as files in the multipart form field 'file' (repeatable), "
                                "e.g. curl -F file=@cat.png.")
        return [(u.filename or f"file{i}", await u.read()) for i, u in enumerate(uploads)]


def create_app(model: ServedModel, url: str, max_batch: int = 64, max_wait_ms: float = 5.0,
               max_body_bytes: int = 16 * 2**20) -> FastAPI:
    """The app serving `model`; `url` is where clients reach it (for the ready line)."""
    server = Server(model, url, max_batch, max_wait_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        warming = asyncio.create_task(server.warm_up())
        yield
        warming.cancel()
        await server.batcher.stop()

    app = FastAPI(title="jaxcifar", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=server.metrics)  # added last: outermost, sees every status

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message}, error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{error.detail}: {request.method} {request.url.path}"}, error.status_code)

    @app.get("/v2")
    async def server_metadata() -> JSONResponse:
        return JSONResponse(protocol.server_metadata())

    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": server.ready}, 200 if server.ready else 503)

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> JSONResponse:
        return JSONResponse(metadata(server.require_model(name)))

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        model = server.require_model(name)
        return JSONResponse({"name": model.name, "ready": server.ready}, 200 if server.ready else 503)

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> JSONResponse:
        model = server.require_ready(name)
        with server.batcher.incoming():
            images, outputs, request_id = protocol.parse_infer_request(protocol.parse_json(await request.body()),
                                                                          model.image_shape)
        logits, probabilities = await server.probabilities(images)
        tensors = {"logits": logits, "probabilities": probabilities}
        return JSONResponse(protocol.infer_response(model, tensors, outputs, request_id))

    @app.post("/v1/predict")
    async def predict_files(request: Request) -> JSONResponse:
        model = server.require_ready(server.model.name)
        k = protocol.parse_top_k(request.query_params.get("top_k"), len(model.class_names))
        with server.batcher.incoming():
            files = await uploaded_files(request)
            images = await asyncio.to_thread(protocol.decode_uploads, files, model.image_size)  # photos take a while
        _, probabilities = await server.probabilities(images)
        return JSONResponse(protocol.predict_response(model, [name for name, _ in files], probabilities, k))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # The page asks /v2/models/{name} for the classes and provenance; the name is the one thing it is told.
    page_html = PAGE.read_text().replace(PAGE_MODEL_NAME, html.escape(model.name, quote=True))

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    return app
