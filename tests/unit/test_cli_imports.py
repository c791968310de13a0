"""The command line stays light: building the parser imports no pydantic and no daemon."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reconciler.cli.client import _BadAnswer, _parse_answer, _quote
from reconciler.cli.common import SPEC_SUFFIX
from reconciler.spec import SPEC_SUFFIX as SPEC_SUFFIX_OF_SPEC


def test_the_cli_copy_of_the_spec_suffix_is_the_same() -> None:
    assert SPEC_SUFFIX == SPEC_SUFFIX_OF_SPEC


def _loaded_by_parsing_status(modules: tuple[str, ...], *, new_only: bool) -> list[str]:
    """Which of ``modules`` a fresh interpreter has after parsing ``status --json``.

    ``new_only``: leave out what the interpreter had before the import (site, an
    editable install's finder): not ours.
    """
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from reconciler.cli import parse_args\n"
        "parse_args(['status', '--json'])\n"
        f"loaded = [m for m in {modules!r} if m in sys.modules"
        f"{' and m not in before' if new_only else ''}]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return [name for name in result.stdout.strip().split(",") if name]


def test_parsing_a_client_command_imports_no_pydantic_and_no_daemon() -> None:
    heavy = ("pydantic", "reconciler.daemon", "reconciler.process", "psutil")
    assert _loaded_by_parsing_status(heavy, new_only=False) == []


def test_a_client_command_imports_no_http_stack_and_only_its_own_module() -> None:
    heavy = (
        "http.client",
        "email",
        "urllib.parse",
        "reconciler.cli.logs",
        "reconciler.cli.diff",
        "reconciler.cli.files",
        "shtab",
    )
    assert _loaded_by_parsing_status(heavy, new_only=True) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            (200, b"{}"),
            id="content-length",
        ),
        pytest.param(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\n{\"a\r\n4;x=1\r\n\": 1\r\n1\r\n}\r\n0\r\n\r\n",
            (404, b'{"a": 1}'),
            id="chunked-with-extension",
        ),
        pytest.param(b"HTTP/1.0 500 X\r\n\r\nbody", (500, b"body"), id="until-close"),
    ],
)
def test_answers_are_parsed(raw: bytes, expected: tuple[int, bytes]) -> None:
    assert _parse_answer(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [b"", b"garbage", b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"],
)
def test_what_is_not_an_answer_is_refused(raw: bytes) -> None:
    with pytest.raises(_BadAnswer):
        _parse_answer(raw)


@pytest.mark.parametrize("text", ["a", "../x", "%2e%2e", "ü b/c", "a&b=c", "x" * 300])
def test_ids_are_quoted_as_urllib_does(text: str) -> None:
    import urllib.parse

    assert _quote(text) == urllib.parse.quote(text, safe="")


def test_the_daemon_imports_no_aiohttp_and_no_prometheus_client() -> None:
    """Both listeners and the HTTP probe are h11 on asyncio streams: aiohttp, with its
    client, cost the daemon 12 MiB of RSS and 240 ms of start-up (bench/import_cost.py).
    /metrics writes its own text: prometheus_client, with the http.server, urllib.request
    and wsgiref it loads, cost another 2.4 MiB."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys, reconciler.daemon; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    loaded = set(result.stdout.split())
    assert "h11" in loaded, "the checks below look at the daemon's real imports"
    packages = {"aiohttp", "yarl", "multidict", "aiosignal", "frozenlist"}
    packages |= {"prometheus_client", "wsgiref"}
    assert {name.split(".")[0] for name in loaded} & packages == set()
    assert loaded & {"http.server", "urllib.request"} == set()
