"""/readyz follows Redis: 200 while it answers, 503 once it is stopped, 200 again once it returns."""

from __future__ import annotations

from pathlib import Path

from service import create_app
from service.core.config import Settings
from service.core.connection import connect
from service.dev.embedded_redis import EmbeddedRedis
from tests.conftest import TOKEN
from tests.helpers import wait_until


def test_readyz_reports_redis_stopped_and_back(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        app = create_app(Settings(redis_url=server.url, api_tokens=(TOKEN,)), connection=connect(server.url))
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        server.stop()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "redis_unavailable"
        assert client.get("/healthz").status_code == 200
        server.start()
        # After a failed connection the web waits a second before it connects again (it backs off).
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=5, what="readiness again")
    finally:
        server.stop()
