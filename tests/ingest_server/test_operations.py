"""Operations: readiness, JSON logs, quiet refusals, and an OpenAPI description that matches
the routes (docs/operations.md)."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from websockets.exceptions import InvalidStatus

from ingest_server.app import create_app
from ingest_server.config import ServerConfig
from ingest_server.service import IngestService
from tests.support.server import IngestServer

from .client import FRAME, Client, frames
from .harness import WAIT, in_process

TOKEN = "operations-token-0123456"


def test_readiness_follows_storage_and_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with in_process(tmp_path / "data") as srv:
        ready = httpx.get(f"{srv.http}/readyz", timeout=WAIT)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"

        def full(self: IngestService) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(IngestService, "_probe", full)
        r = httpx.get(f"{srv.http}/readyz", timeout=WAIT)
        assert r.status_code == 503
        assert r.json()["checks"] == {"storage": False, "shutting_down": False}
        assert "No space left" in r.json()["detail"]
        monkeypatch.undo()
        srv.service.registry.shutting_down = True
        r = httpx.get(f"{srv.http}/readyz", timeout=WAIT)
        assert r.status_code == 503 and r.json()["checks"]["shutting_down"] is True
        assert httpx.get(f"{srv.http}/healthz", timeout=WAIT).status_code == 200  # still alive
        srv.service.registry.shutting_down = False


def test_json_logs_are_one_object_per_line_with_fields(tmp_path: Path) -> None:
    args = ["--log-format", "json", "--token", TOKEN]
    with IngestServer(tmp_path / "data", args=args) as srv:
        with Client(srv.url, TOKEN) as c:
            c.hello("logged")
            c.stream(0, frames(2, seed=100))
            c.send('{"type": "shout"}')
            assert c.expect_close().code == 1007
        with pytest.raises(InvalidStatus):
            Client(srv.url, "wrong-token-0123456789")
    lines = [line for line in srv.log_path.read_text().splitlines()
             if line and not line.startswith("--- ")]
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    closing = next(r for r in records if r.get("code") == 1007)
    assert closing["stream_id"] == "logged" and closing["level"] == "info"
    assert closing["reason"] and closing["token"].startswith("token:")
    refused = next(r for r in records if r.get("status") == 403)
    assert refused["reason"] == "invalid"
    assert TOKEN not in "\n".join(lines)  # the server never logs the token itself
    # A refused login is not a server error (uvicorn would log one: see service.deny).
    assert not [r for r in records if r["level"] == "error"], records


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI >= 0.16x nests them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from api_routes(route.original_router.routes)


def test_openapi_describes_every_rest_route_with_its_auth_and_models(tmp_path: Path) -> None:
    app = create_app(ServerConfig(data_dir=tmp_path / "data", tokens=(TOKEN,)))
    spec = app.openapi()
    # the web view's static files (/ui/...) hold no data and are left out of the schema
    routes = [r for r in api_routes(app.routes) if r.include_in_schema]
    assert {r.path for r in routes} == set(spec["paths"]) == {
        "/healthz", "/readyz", "/metrics", "/v1/streams", "/v1/streams/{stream_id}",
        "/v1/streams/{stream_id}/audio.wav", "/v1/events", "/v1/streams/{stream_id}/history",
        "/v1/streams/{stream_id}/levels", "/v1/ui/session",
        "/v1/ui/streams/{stream_id}/audio.wav"}
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": spec["components"][
            "securitySchemes"]["bearer"]["description"]}
    for path, item in spec["paths"].items():
        if path == "/v1/ui/session":  # POST: sets the web view's cookie (docs/ui.md)
            assert {"204", "401", "403"} <= set(item["post"]["responses"])
            assert "security" in item["post"]
            continue
        op = item["get"]
        ok = op["responses"]["200"]["content"]
        open_ = path in ("/healthz", "/readyz")
        assert ("security" in op) != open_, path
        if not open_:
            assert {"401", "403"} <= set(op["responses"]), path
        if path.endswith(".wav"):
            assert "audio/wav" in ok and "404" in op["responses"]
        elif path == "/metrics":
            assert any(t.startswith("text/plain") for t in ok)
        elif path == "/v1/events":  # discovery, Server-Sent Events (protocol §11.4)
            assert "text/event-stream" in ok
        elif path.endswith(("/history", "/levels")):  # the web view's JSON (docs/ui.md)
            assert "application/json" in ok, path
        else:
            assert "$ref" in ok["application/json"]["schema"], path
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


def test_openapi_served_by_the_running_server_matches(tmp_path: Path) -> None:
    with in_process(tmp_path / "data") as srv:
        paths = httpx.get(f"{srv.http}/openapi.json", timeout=WAIT).json()["paths"]
        assert "/metrics" in paths and "/readyz" in paths
        with Client(srv.url) as c:
            c.hello("openapi")
            c.end(0, 0)
        detail = httpx.get(f"{srv.http}/v1/streams/openapi", timeout=WAIT).json()
        schema = httpx.get(f"{srv.http}/openapi.json", timeout=WAIT).json()
        fields = schema["components"]["schemas"]["StreamDetail"]["properties"]
        assert set(detail) == set(fields)


def test_unknown_websocket_path_is_404_without_an_error_log(tmp_path: Path) -> None:
    with IngestServer(tmp_path / "data") as srv:
        with pytest.raises(InvalidStatus) as e:
            Client(srv.url.replace("/v1/stream", "/elsewhere"))
        assert e.value.response.status_code == 404
        with Client(srv.url) as c:
            c.hello("after-404")
            c.stream(0, frames(1, seed=101))
            c.end(1, FRAME)
    assert " ERROR " not in srv.log_path.read_text()
