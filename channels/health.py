"""Liveness and readiness for load balancers: ``GET /healthz`` and ``GET /readyz``."""

from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from bot.ports.health import Health

logger = structlog.get_logger(__name__)

#: A named readiness check: True when that dependency is ready.
Check = Callable[[], Awaitable[bool]]


def database_check(health: Health) -> Check:
    """Ready while the database answers a trivial query."""

    async def check() -> bool:
        try:
            await health.ping()
        except Exception as exc:
            logger.warning("readyz.database_unavailable", error=type(exc).__name__)
            return False
        return True

    return check


def health_routes(checks: Mapping[str, Check]) -> list[web.RouteDef]:
    """``/healthz`` answers 200 while the process is up; ``/readyz`` 200 when every check
    passes, else 503, with each check's result named."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        results = {name: await check() for name, check in checks.items()}
        status = 200 if all(results.values()) else 503
        return web.json_response({"ready": status == 200, "checks": results}, status=status)

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]
