"""What every service's HTTP face shares: /healthz, /readyz, /metrics, a body-size limit, and the
way a service process is served."""

from __future__ import annotations

from typing import Awaitable, Callable

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


def limit_body_size(app: FastAPI, service: str, max_bytes: int) -> None:
    """Refuse oversized bodies with 413 before anything reads them."""

    @app.middleware("http")
    async def _limit(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            metrics.HTTP_REJECTIONS.labels(service, request.url.path.split("/")[1], "413").inc()
            return JSONResponse({"detail": f"request body over {max_bytes} bytes"},
                                status_code=413)
        return await call_next(request)


def serve(app: FastAPI, settings: Settings) -> None:
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None,
                access_log=False, lifespan="on")
