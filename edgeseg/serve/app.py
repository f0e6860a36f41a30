"""The HTTP face of the service: ``create_app(store, ...)`` returns a FastAPI application.

Endpoints: ``POST /v1/segment`` (an image in the body or as multipart field ``image``; a PNG
mask for ``Accept: image/png``, else JSON), ``POST /v1/feedback`` (a corrected mask for a
request id), ``GET /health``, ``GET /v1/models``, ``GET /metrics``, the admin endpoints
``POST /v1/models/{version}/activate`` and ``POST /v1/models/rollback``, and FastAPI's ``/docs``.

Every refusal is a 4xx with one JSON line ``{"error": "..."}``; an unexpected failure is a 500
with one line too, never a traceback. Admin endpoints need ``Authorization: Bearer TOKEN`` when
a token is set, and are off when the service is bound beyond 127.0.0.1 without one.
"""


import functools
import hmac
import logging
from pathlib import Path

from edgeseg.runtime.errors import BundleError, EdgesegError, InputError, MissingDependency
from edgeseg.serve import require
from edgeseg.serve.images import IMAGE_TYPES, encode_png
from edgeseg.serve.metrics import CONTENT_TYPE
from edgeseg.serve.service import NotReady, Service, UnknownRequest
from edgeseg.serve.store import ModelStore, StoreError, UnknownVersion

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 32_000_000
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class HTTPRefused(EdgesegError):
    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def _classify(exc: Exception) -> tuple[int, str]:
    """(HTTP status, metrics reason) of an exception raised while answering."""
    if isinstance(exc, HTTPRefused):
        return exc.status, exc.reason
    status = getattr(exc, "status", None)  # ImageRefused
    if isinstance(exc, InputError) and isinstance(status, int):
        return status, {413: "too_large", 415: "not_an_image"}.get(status, "bad_image")
    for kind, status, reason in ((UnknownVersion, 404, "unknown_version"), (UnknownRequest, 404, "unknown_request"),
                                 (NotReady, 503, "not_ready"), (MissingDependency, 503, "missing_dependency"),
                                 (InputError, 422, "bad_input"), (StoreError, 409, "store"),
                                 (BundleError, 409, "refused_bundle")):
        if isinstance(exc, kind):
            return status, reason
    return 500, "internal"


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPRefused(f"request body of {int(declared)} bytes is over the limit of {limit} bytes", 413, "too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPRefused(f"request body is over the limit of {limit} bytes", 413, "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _payload(request, limit: int, field: str) -> tuple[bytes, dict]:
    """(file bytes, other form fields) from a raw image body or a multipart form."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    body = await _read_body(request, limit)
    if ctype == "multipart/form-data":
        from starlette.requests import Request

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=2, max_fields=8, max_part_size=limit)
        except Exception as exc:  # a malformed form is the client's error
            raise HTTPRefused(f"malformed multipart form: {getattr(exc, 'detail', exc)}", 400, "bad_form") from None
        upload = form.get(field)
        if upload is None or isinstance(upload, str):
            raise HTTPRefused(f"the multipart form has no file field {field!r}", 400, "bad_form")
        data = await upload.read()
        return data, {k: v for k, v in form.items() if isinstance(v, str)}
    if ctype not in IMAGE_TYPES:
        raise HTTPRefused(f"content type {ctype or '(none)'!r} is not taken: send {', '.join(IMAGE_TYPES[:3])} "
                          f"or multipart/form-data with a file field {field!r}", 415, "content_type")
    if not body:
        raise HTTPRefused(f"empty request body: send the {field} as {', '.join(IMAGE_TYPES[:3])}", 400, "empty_body")
    return body, {}


def create_app(store: ModelStore | str | Path, *, token: str | None = None, host: str = "127.0.0.1",
               log_dir: str | Path | None = None, max_body_bytes: int = MAX_BODY_BYTES, max_pixels: int = 40_000_000,
               threads: int | None = None, keep_images: bool = False, service: Service | None = None):
    fastapi = require("fastapi")
    try:  # python-multipart, for multipart/form-data uploads (imported as python_multipart since 0.0.13)
        require("python_multipart")
    except MissingDependency:
        require("multipart")
    require("PIL")
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    svc = service or Service(store, log_dir=log_dir, max_pixels=max_pixels, threads=threads, keep_images=keep_images)
    if svc.current is None:
        svc.start()
    app = fastapi.FastAPI(title="edgeseg serve", version="1",
                          description="Segmentation with verified, versioned edgeseg bundles.")
    app.state.service = svc
    Request = fastapi.Request

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    def guarded(endpoint: str):
        def deco(fn):
            @functools.wraps(fn)
            async def wrapper(*args, **kwargs):
                try:
                    resp = await fn(*args, **kwargs)
                    reason = None
                except Exception as exc:  # every failure becomes one JSON line
                    status, reason = _classify(exc)
                    if status == 500:
                        log.exception("%s failed", endpoint)
                        resp = error(500, f"internal error ({type(exc).__name__}); see the service's log")
                    else:
                        resp = error(status, str(exc))
                    svc.refused(endpoint, status, str(exc) if status != 500 else type(exc).__name__)
                svc.metrics.answered(endpoint, resp.status_code, reason)
                return resp
            return wrapper
        return deco

    def admin(request) -> str:
        if token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise HTTPRefused("admin endpoints need the header 'Authorization: Bearer TOKEN' (the --token given "
                                  "to edgeseg serve)", 401, "unauthorized")
            return "token"
        if not is_loopback(host):
            raise HTTPRefused(f"admin endpoints are off: the service is bound to {host}, beyond 127.0.0.1, without a "
                              "token; restart it with --token", 403, "forbidden")
        return "localhost"

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "query")
        svc.metrics.answered(request.url.path, 422, "bad_parameter")
        return error(422, f"invalid parameter {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return error(exc.status_code, exc.detail)

    @app.post("/v1/segment", summary="Segment one image (PNG, JPEG or TIFF)")
    @guarded("segment")
    async def segment(request: Request, version: str | None = None, probabilities: bool = False):
        """The image is the body (Content-Type image/png, image/jpeg, image/tiff) or the multipart
        field ``image``. ``Accept: image/png`` gets the mask as an 8-bit PNG of label ids at the
        image's size (model version, sha256, drift and latency in ``X-Edgeseg-*`` headers); any
        other Accept gets JSON with a run-length encoded mask and per-class areas."""
        data, _ = await _payload(request, max_body_bytes, "image")
        answer, mask = await run_in_threadpool(svc.segment, data, version, probabilities)
        if "image/png" in (request.headers.get("accept") or ""):
            png = await run_in_threadpool(encode_png, mask)
            d = answer["drift"]
            return Response(png, media_type="image/png", headers={
                "X-Edgeseg-Request-Id": answer["request_id"], "X-Edgeseg-Model-Version": answer["model"]["version"],
                "X-Edgeseg-Bundle-Sha256": answer["model"]["sha256"], "X-Edgeseg-Latency-Ms": str(answer["latency_ms"]),
                "X-Edgeseg-Drift-Score": "" if d["score"] is None else f"{d['score']:.6g}",
                "X-Edgeseg-Drift-Flag": "" if d["drifted"] is None else str(d["drifted"]).lower(),
                "X-Edgeseg-Classes": ",".join(answer["classes"])})
        from edgeseg.serve.encode import rle_encode

        answer["mask"] = await run_in_threadpool(rle_encode, mask)
        return JSONResponse(answer)

    @app.post("/v1/feedback", summary="Score an earlier answer against a corrected mask")
    @guarded("feedback")
    async def feedback(request: Request, request_id: str | None = None):
        """The corrected mask (label ids, or 0/255 for a binary model) at the image's size, as the
        body (``?request_id=...``) or as multipart fields ``mask`` and ``request_id``."""
        data, fields = await _payload(request, max_body_bytes, "mask")
        rid = request_id or fields.get("request_id") or ""
        return JSONResponse(await run_in_threadpool(svc.feedback, rid, data))

    @app.get("/health", summary="Ready when a verified bundle is loaded")
    @guarded("health")
    async def health(request: Request):
        cur = svc.current
        if cur is None:
            return JSONResponse({"status": "not ready", "error": svc.not_ready}, status_code=503)
        return JSONResponse({"status": "ready", "version": cur.version, "sha256": cur.sha256})

    @app.get("/v1/models", summary="Versions, the active one, provenance, recent switches")
    @guarded("models")
    async def models(request: Request):
        return JSONResponse(await run_in_threadpool(svc.models))

    @app.get("/metrics", summary="Prometheus text format")
    async def metrics(request: Request):
        return PlainTextResponse(svc.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/models/{version}/activate", summary="Switch to a version (admin)")
    @guarded("activate")
    async def activate(request: Request, version: str):
        actor = admin(request)
        loaded = await run_in_threadpool(svc.switch, "activate", version, f"http:{actor}")
        return JSONResponse({"active": loaded.version, "sha256": loaded.sha256})

    @app.post("/v1/models/rollback", summary="Go back to the previous version (admin)")
    @guarded("rollback")
    async def rollback(request: Request):
        actor = admin(request)
        loaded = await run_in_threadpool(svc.switch, "rollback", None, f"http:{actor}")
        return JSONResponse({"active": loaded.version, "sha256": loaded.sha256})

    return app


def serve(store: ModelStore | str | Path, host: str = "127.0.0.1", port: int = 8000, **kw) -> None:
    """Run the service with uvicorn until interrupted."""
    uvicorn = require("uvicorn")
    app = create_app(store, host=host, **kw)
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["create_app", "is_loopback", "serve"]
