"""``GET /api/v1/openapi.json``: valid OpenAPI 3.1, every route described, real answers match."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate

from reconciler.api import ApiServer
from reconciler.loop import Reconciler
from tests.support import MARK_ENV, SESSION_MARK, eventually, new_reconciler, reconciling

SPEC = (
    'type = "sleeper"\nbinary_path = "/bin/sleep"\nargs = ["300"]\nlog = "null"\n'
    f'env = {{ {MARK_ENV} = "{SESSION_MARK}" }}\n'
)


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[Reconciler, aiohttp.ClientSession, ApiServer]]:
    reconciler = new_reconciler(tmp_path)
    socket_path = tmp_path / "run" / "api.sock"
    async with reconciling(reconciler):
        server = ApiServer(reconciler, socket_path=socket_path)
        await server.start()
        try:
            async with aiohttp.ClientSession(
                "http://reconciler", connector=aiohttp.UnixConnector(path=str(socket_path))
            ) as session:
                yield reconciler, session, server
        finally:
            await server.stop()


def _conforms(document: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    response = document["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(body)


async def test_the_document_is_valid_and_describes_every_route(served) -> None:
    _, session, server = served
    async with session.get("/api/v1/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    validate(document)  # OpenAPI 3.1, as openapi-spec-validator reads it
    assert document["openapi"] == "3.1.0"
    routes = {
        (resource.canonical, route.method.lower())
        for resource in server._application().router.resources()
        for route in resource
        if route.method != "HEAD"
    }
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == described


async def test_real_answers_match_their_schemas(served) -> None:
    reconciler, session, _ = served
    async with session.get("/api/v1/openapi.json") as response:
        document = await response.json()
    (reconciler.source.specs_dir / "web.toml").write_text(SPEC)
    await eventually(
        lambda: "web" in reconciler.manager.collector_ids() and reconciler.view("web").converged
    )
    calls = [
        ("get", "/api/v1/collectors", None, 200),
        ("get", "/api/v1/collectors/web", None, 200),
        ("get", "/api/v1/collectors/nope", None, 404),
        ("get", "/api/v1/events", None, 200),
        ("post", "/api/v1/collectors/web/pause", None, 200),
        ("post", "/api/v1/collectors/web/pause", None, 200),
        ("post", "/api/v1/collectors/web/resume", None, 200),
        ("post", "/api/v1/collectors/web/restart", None, 200),
        ("post", "/api/v1/plan", {"files": {"web.toml": SPEC.replace("300", "301")}}, 200),
        ("post", "/api/v1/plan", {"files": {"web.toml": "type = 1\n"}}, 422),
    ]
    for method, path, body, status in calls:
        async with session.request(method, path, json=body) as response:
            answer = await response.json()
            assert response.status == status, (path, answer)
        template = path.replace("/web", "/{id}").replace("/nope", "/{id}")
        _conforms(document, template, method, status, answer)
