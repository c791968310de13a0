"""``GET /api/v1/openapi.json``: valid OpenAPI 3.1, every route described, real answers match."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate

from reconciler.api import ApiServer, openapi
from reconciler.api.constants import MAX_PLAN_FILES, MAX_REQUEST_LINE_BYTES, PLAN_BODY_MAX_BYTES
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
    routes = {(pattern, method.lower()) for method, pattern in server._router().routes()}
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert routes == described


def test_every_error_answer_is_the_design_error_body() -> None:
    """Each 4xx and 5xx of each operation: §5's body, with the codes of that status only."""
    spec = openapi.document("test")
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"400", "403"} <= set(responses), (method, path)
            for status, response in responses.items():
                if int(status) < 400:
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema["allOf"][0] == {"$ref": "#/components/schemas/Error"}, status
                codes = {pair["properties"]["code"]["const"] for pair in _pairs(schema)}
                assert codes and all(_status(code, status) for code in codes), (
                    method,
                    path,
                    status,
                    codes,
                )


DESIGN_STATUS = {
    "PROCESS_NOT_FOUND": 404,
    "ALREADY_RUNNING": 409,
    "SPAWN_FAILED": 500,
    "TERMINATE_FAILED": 500,
    "INVALID_STATE": 409,
    "PLATFORM_NOT_SUPPORTED": 501,
    "TIMEOUT": 504,
    "IO_ERROR": 500,
    "INVALID_SPEC": 422,
    "BAD_REQUEST": 400,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "INTERNAL": 500,
}
"""DESIGN §5's table."""


def _status(code: str, status: str) -> bool:
    # 413 has no code of its own in §5: a client error it does not name is a bad request.
    return DESIGN_STATUS[code] == int(status) or (status, code) == ("413", "BAD_REQUEST")


def _pairs(schema: dict[str, Any]) -> list[dict[str, Any]]:
    pairs: list[dict[str, Any]] = schema["allOf"][1]["properties"]["error"]["oneOf"]
    return pairs


def test_a_code_with_the_wrong_status_or_category_does_not_conform() -> None:
    spec = openapi.document("test")
    not_found = {"error": {"code": "NOT_FOUND", "category": "Resource", "message": "x"}}
    _conforms(spec, "/api/v1/collectors/{id}", "get", 404, not_found)
    for wrong in (
        {"error": {**not_found["error"], "category": "Configuration"}},
        {"error": {**not_found["error"], "code": "INVALID_STATE"}},
        {"error": {**not_found["error"], "stack": "Traceback ..."}},
        {"error": {"code": "NOT_FOUND", "category": "Resource"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            _conforms(spec, "/api/v1/collectors/{id}", "get", 404, wrong)
    invalid_spec = {"error": {"code": "INVALID_SPEC", "category": "Configuration", "message": "x"}}
    with pytest.raises(jsonschema.ValidationError, match="problems"):
        _conforms(spec, "/api/v1/plan", "post", 422, invalid_spec)


def test_the_limits_are_documented() -> None:
    plan = openapi.document("test")["paths"]["/api/v1/plan"]["post"]
    assert str(PLAN_BODY_MAX_BYTES) in plan["requestBody"]["description"]
    assert str(PLAN_BODY_MAX_BYTES) in plan["responses"]["413"]["description"]
    files = plan["requestBody"]["content"]["application/json"]["schema"]["properties"]["files"]
    assert files["maxProperties"] == MAX_PLAN_FILES
    description = openapi.document("test")["info"]["description"]
    assert str(MAX_REQUEST_LINE_BYTES) in description and str(PLAN_BODY_MAX_BYTES) in description


async def test_real_answers_match_their_schemas(served) -> None:
    reconciler, session, _ = served
    async with session.get("/api/v1/openapi.json") as response:
        document = await response.json()
    (reconciler.source.specs_dir / "web.toml").write_text(SPEC)
    (reconciler.source.specs_dir / "idle.toml").write_text(SPEC + 'state = "stopped"\n')
    await eventually(
        lambda: (
            "web" in reconciler.manager.collector_ids()
            and reconciler.view("web").converged
            and "idle" in {v.collector_id for v in reconciler.views() if v.converged}
        )
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
        ("post", "/api/v1/plan", {"file": {}}, 400),
        ("post", "/api/v1/plan", {"files": {"web.toml": "x"}, "extra": 1}, 400),
        ("get", "/api/v1/events?limit=0", None, 400),
        ("get", "/api/v1/collectors?rescan=maybe", None, 400),
        ("post", "/api/v1/collectors/nope/pause", None, 404),
        ("post", "/api/v1/collectors/idle/restart", None, 409),
        ("get", "/api/v1/openapi.json", None, 200),
    ]
    for method, path, body, status in calls:
        async with session.request(method, path, json=body) as response:
            answer = await response.json()
            assert response.status == status, (path, answer)
        template = path.split("?")[0]
        for name in ("web", "nope", "idle"):
            template = template.replace(f"/{name}", "/{id}")
        _conforms(document, template, method, status, answer)
