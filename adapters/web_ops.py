"""Operations endpoints of the web server: liveness, readiness and Prometheus metrics.

- `GET /healthz`: 200 `{"status": "ok"}` while the event loop serves requests (liveness).
- `GET /readyz`: 200 when the database answers `SELECT 1` and the model backend is ready, else
  503; the body names each check's outcome.
- `GET /metrics`: the Prometheus text format (only when `web.metrics` is on).

None of them needs a key: orchestrators and Prometheus call them without one. What they reveal is
counts and the names of failed checks, never a channel, a user or a message.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from bot.health import Readiness
from bot.metrics import PROMETHEUS_CONTENT_TYPE, PrometheusMetrics


def build_ops_router(readiness: Readiness | None, metrics: PrometheusMetrics | None) -> APIRouter:
    """The routes above; `/readyz` always answers ready without `readiness`, `/metrics` exists
    only with `metrics`."""
    router = APIRouter()

    @router.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if readiness is None:
            return JSONResponse({"status": "ready", "checks": {}})
        report = await readiness.check()
        body = {"status": "ready" if report.ready else "not ready", "checks": report.checks}
        return JSONResponse(body, status_code=200 if report.ready else 503)

    if metrics is not None:

        @router.get("/metrics", include_in_schema=False)
        async def metrics_endpoint() -> Response:
            return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    return router
