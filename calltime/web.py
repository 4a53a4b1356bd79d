"""What every service's HTTP face shares: /healthz, /readyz, /metrics, a body-size limit, and the
way a service process is served."""

from __future__ import annotations

from typing import Awaitable, Callable

import asyncpg
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from calltime import metrics
from calltime.settings import Settings

ReadinessCheck = Callable[[], Awaitable[bool]]


def ops_router() -> APIRouter:
    """Readiness runs the checks the service's lifespan put in `app.state.readiness_checks`;
    until start-up has finished there are none, and the service is not ready."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        checks: dict[str, ReadinessCheck] = getattr(request.app.state, "readiness_checks", {})
        results = {}
        for name, check in checks.items():
            try:
                results[name] = await check()
            except Exception:  # noqa: BLE001 - a failing check means "not ready", not a 500
                results[name] = False
        ready = bool(results) and all(results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    @router.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return router


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuses bodies over `max_bytes` with 413, whether declared up front (Content-Length) or
    streamed in chunks, before the application has read them whole."""

    def __init__(self, app, *, max_bytes: int, service: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send) -> None:
        metrics.HTTP_REJECTIONS.labels(self.service, scope["path"].split("/")[1], "413").inc()
        response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"},
                                status_code=413)
        await response(scope, receive, send)


def guard_http_edge(app: FastAPI, service: str, max_body_bytes: int) -> None:
    """What every service's HTTP face refuses before it can hurt: oversized bodies (413) and
    values PostgreSQL cannot store, such as NUL characters or out-of-range numbers (400)."""
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, service=service)

    @app.exception_handler(asyncpg.DataError)
    async def _unstorable(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        metrics.HTTP_REJECTIONS.labels(service, request.url.path.split("/")[1], "400").inc()
        return JSONResponse({"detail": f"a value in the request cannot be stored: "
                                       f"{type(exc).__name__}"}, status_code=400)


def serve(app: FastAPI, settings: Settings) -> None:
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None,
                access_log=False, lifespan="on")
