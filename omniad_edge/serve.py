"""Serving on Ray Serve (extra `serve`): Inspector replicas behind Ray Serve's HTTP ingress, concurrent requests
batched onto Inspector.run_batch by Ray Serve's @serve.batch.

    omniad-edge serve [BUNDLE] --replicas 2 --port 8000
    from omniad_edge.serve import Client
    result = Client("http://127.0.0.1:8000").inspect("part.png")    # verdict, score, boxes, mask, timings ...

HTTP API (route /):
- POST with the image file's bytes as the body (PNG, JPEG, anything Pillow reads); query `mask=rle` (default,
  row-major run lengths as in Inspection.to_dict), `mask=png` (base64 PNG, 0/255) or `mask=none`.
  200: the Inspection as JSON plus "verdict", "batch_size" (frames in the run_batch call that served it) and
  timings["server"] (ms in the replica, queueing included).
- GET: bundle name, mode and provider of a replica.
- Bad input (empty body, bytes that are no image, an image above the server's limits, an unknown mask format)
  gets a 4xx JSON {"error": ..., "status": ...} naming the problem; it is refused before batching, so it never
  fails the frames it would have been batched with, and the replica keeps serving.

Each replica owns one Inspector and runs one batch at a time (max_concurrent_batches=1), so the Inspector is never
called from two threads. Ray is imported on first use; its absence raises ServeError naming the extra.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from .errors import FrameError, OmniADError

log = logging.getLogger(__name__)

SERVE_HINT = "serving needs Ray Serve: pip install omniad-edge[serve]"
MASK_FORMATS = ("rle", "png", "none")
MAX_BODY_BYTES = 32 * 2**20
# a server decodes untrusted bytes: its cap sits well below frame.MAX_PIXELS (the preprocessor resizes to ~1 MP)
MAX_REQUEST_PIXELS = 40_000_000
APP_NAME = "omniad-edge"


class ServeError(OmniADError, RuntimeError):
    """Ray Serve is missing or the deployment failed, or the server refused a request (`status` holds its code)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RequestError(OmniADError, ValueError):
    """A request the server refuses; `status` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _ray():
    import warnings

    try:
        with warnings.catch_warnings():  # Ray's own imports raise dependency deprecation warnings
            warnings.simplefilter("ignore", DeprecationWarning)
            import ray
            from ray import serve
    except ImportError as exc:
        raise ServeError(f"{SERVE_HINT} ({exc})") from None
    return ray, serve


# -- request and response (pure functions, also used by the tests without Ray) -----------------------------------
def decode_request(body: bytes, *, max_bytes: int = MAX_BODY_BYTES, max_pixels: int = MAX_REQUEST_PIXELS):
    """Image bytes -> HxWx3 uint8 RGB, or RequestError(4xx) naming the problem. The size is read from the header
    and checked before anything is decoded."""
    import warnings

    from PIL import Image

    from .frame import to_rgb

    if not body:
        raise RequestError(400, "empty request body: POST the image file's bytes (PNG, JPEG, ...)")
    if len(body) > max_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes, above the server's limit of {max_bytes}")
    try:
        with warnings.catch_warnings():  # Pillow warns from 89 MP; the server's own cap applies below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)) as image:
                w, h = image.size
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"image is too large to decode safely: {exc}") from None
    except (OSError, ValueError, SyntaxError):
        raise RequestError(400, f"request body ({len(body)} bytes) is not an image format the server reads "
                                "(PNG, JPEG, BMP, TIFF, WebP, ...)") from None
    if w * h > max_pixels:
        raise RequestError(413, f"image is {w}x{h} = {w * h / 1e6:.0f} MP, above the server's limit of "
                                f"{max_pixels / 1e6:.0f} MP")
    try:
        return to_rgb(body)
    except FrameError as exc:
        raise RequestError(400, str(exc)) from None


def response(inspection, mask: str, batch_size: int, server_ms: float) -> dict:
    """The JSON body for one Inspection."""
    out = inspection.to_dict(mask="rle" if mask == "rle" else "none")
    out["verdict"] = "anomalous" if inspection.is_anomalous else "normal"
    if mask == "png" and inspection.mask is not None:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.asarray(inspection.mask, np.uint8) * 255).save(buffer, format="PNG")
        out["mask_png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    out["batch_size"] = batch_size
    out["timings"]["server"] = round(server_ms, 3)
    return out


def response_mask(result: dict) -> np.ndarray | None:
    """The bool mask of a response dict, from whichever form it carries (None with mask=none)."""
    if "mask_png" in result:
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask_png"])))) > 0
    if "mask" in result:
        from .inspection import mask_from_rle

        return mask_from_rle(result["mask"])
    return None


# -- the deployment ------------------------------------------------------------------------------------------------
def build_app(engine=None, *, replicas: int = 1, inspector_options: dict | None = None, max_batch_size: int = 8,
              batch_wait_s: float = 0.01, ray_actor_options: dict | None = None, max_body_bytes: int = MAX_BODY_BYTES,
              max_pixels: int = MAX_REQUEST_PIXELS):
    """A Ray Serve application of `replicas` Inspector replicas (give it to serve.run).

    engine: bundle directory readable on every node that runs a replica (None: the embedded bundle).
    inspector_options: Inspector keyword arguments (mode, threads, providers, ...); threads defaults to the
    replica's CPUs. ray_actor_options: per replica, e.g. {"num_cpus": 2} or {"num_gpus": 1} for GPU replicas.
    """
    _, serve = _ray()
    from starlette.responses import JSONResponse

    if not isinstance(replicas, int) or replicas < 1:
        raise ServeError(f"replicas must be a positive int, got {replicas!r}")
    engine = str(Path(engine).resolve()) if engine is not None else None
    actor_options = {"num_cpus": 1, **(ray_actor_options or {})}
    options = dict(inspector_options or {})
    if options.get("threads") is None:
        options["threads"] = max(1, int(actor_options["num_cpus"]))
    limits = {"max_bytes": max_body_bytes, "max_pixels": max_pixels}

    def error(status: int, message: str):
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @serve.deployment(name="Inspector", num_replicas=replicas, ray_actor_options=actor_options,
                      max_ongoing_requests=4 * max_batch_size)
    class InspectorReplica:
        def __init__(self):
            from omniad_edge.inspector import Inspector

            self.inspector = Inspector(engine, **options)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_s)
        async def infer(self, frames: list) -> list:
            # in a worker thread, so the replica keeps accepting (and validating) requests meanwhile
            results = await asyncio.to_thread(self.inspector.run_batch, frames)
            return [(result, len(frames)) for result in results]

        async def __call__(self, request):
            start = time.perf_counter()
            if request.method == "GET":
                return JSONResponse({"bundle": self.inspector.bundle.name, "mode": self.inspector.mode,
                                     "provider": self.inspector.backend.provider})
            if request.method != "POST":
                return error(405, f"method {request.method} not allowed: POST an image, or GET for information")
            mask = request.query_params.get("mask", "rle")
            if mask not in MASK_FORMATS:
                return error(400, f"mask must be one of {list(MASK_FORMATS)}, got {mask!r}")
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limits["max_bytes"]:
                return error(413, f"request body is {declared} bytes, above the server's limit of "
                                  f"{limits['max_bytes']}")
            try:  # decoding a big image in a thread keeps the replica's event loop answering
                frame = await asyncio.to_thread(decode_request, await request.body(), **limits)
            except RequestError as exc:
                return error(exc.status, str(exc))
            try:
                inspection, batch_size = await self.infer(frame)
            except OmniADError as exc:  # a backend failure: the request fails, the replica stays up
                return error(500, f"inspection failed: {exc}")
            return JSONResponse(response(inspection, mask, batch_size, (time.perf_counter() - start) * 1e3))

    return InspectorReplica.bind()


def start(engine=None, *, replicas: int = 1, port: int = 8000, host: str = "127.0.0.1", address: str | None = None,
          **app_options) -> str:
    """Deploy on Ray Serve and return the URL. Without `address` a local Ray cluster is started; this package is
    shipped to its workers (runtime_env py_modules) so the replicas run exactly this code. With an address
    ("ray://head:10001" or "auto") every node needs omniad-edge installed."""
    ray, serve = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        if address is None:
            actor_cpus = (app_options.get("ray_actor_options") or {}).get("num_cpus", 1)
            ray.init(num_cpus=max(os.cpu_count() or 1, int(np.ceil(replicas * actor_cpus))),
                     include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                     runtime_env={"py_modules": [str(Path(__file__).resolve().parent)]})
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_app(engine, replicas=replicas, **app_options), name=APP_NAME, route_prefix="/")
    except Exception as exc:
        raise ServeError(f"deploying on Ray Serve failed: {exc}") from exc
    url = f"http://{host}:{port}"
    log.info("serving %d replica(s) at %s", replicas, url)
    return url


def stop() -> None:
    """Remove the deployment and shut Ray Serve and the Ray connection down."""
    ray, serve = _ray()
    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def serve_forever(engine=None, *, ready=None, **options) -> None:
    """start(...), call ready(url), block until Ctrl+C or SIGTERM (a service manager's stop), then stop()."""
    import signal
    import threading

    url = start(engine, **options)
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        if ready is not None:
            ready(url)
        while not stopping.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop()


class Client:
    """A small HTTP client (standard library only) for the server above.

        client = Client("http://127.0.0.1:8000")
        result = client.inspect(frame)       # numpy RGB array, PIL image, path or encoded bytes
        response_mask(result)                # bool HxW mask
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def inspect(self, image, *, mask: str = "rle") -> dict:
        """POST one image; the response dict, or ServeError(status) with the server's message."""
        if mask not in MASK_FORMATS:
            raise ServeError(f"mask must be one of {list(MASK_FORMATS)}, got {mask!r}")
        return self._request(f"{self.url}/?mask={mask}", _encode(image))

    def info(self) -> dict:
        return self._request(f"{self.url}/", None)

    def _request(self, url: str, body: bytes | None) -> dict:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/octet-stream"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise ServeError(f"server answered {exc.code}: {detail}", status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServeError(f"cannot reach {self.url}: {exc}") from None


def _encode(image) -> bytes:
    """Bytes as they are, files as stored, arrays and PIL images as PNG (lossless)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FrameError(f"frame: file {str(path)!r} does not exist")
        return path.read_bytes()
    from PIL import Image

    from .frame import to_rgb

    buffer = io.BytesIO()
    Image.fromarray(to_rgb(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
