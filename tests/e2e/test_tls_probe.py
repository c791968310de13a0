"""``reconciler run`` holds no OpenSSL until an https probe runs, and then that probe works.

What the daemon has loaded is read from outside, in ``/proc/<pid>/maps``: the files of
``_ssl`` and ``_hashlib``, the extension modules through which Python loads OpenSSL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support import (
    MARK_ENV,
    RECONCILER,
    end_daemon,
    make_certificates,
    marked_pids,
    start_daemon,
    tls_server_context,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


def openssl_files() -> list[str]:
    """The files of ``_ssl`` and ``_hashlib``, the extension modules that load OpenSSL."""
    import _hashlib
    import _ssl

    files = [getattr(module, "__file__", None) for module in (_ssl, _hashlib)]
    if None in files:
        pytest.skip("this Python has OpenSSL's modules built in: nothing to see in its maps")
    return [str(file) for file in files]


def mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def https_server(certificates: Path) -> Iterator[int]:
    """An HTTPS server on a free port of 127.0.0.1, with a certificate the test CA signed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    server.socket = tls_server_context(certificates).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def sleeper(mark: str, probe: str = "") -> str:
    return (
        f'type = "sleeper"\nbinary_path = "/bin/sleep"\nargs = ["300"]\n'
        f'env = {{ {MARK_ENV} = "{mark}" }}\n{probe}'
    )


def test_openssl_is_loaded_by_the_first_https_probe_and_that_probe_passes(
    tmp_path: Path,
) -> None:
    files = openssl_files()
    assert all(file in mapped(os.getpid()) for file in files), "this test sees them when loaded"
    certificates = make_certificates(tmp_path)
    specs, state = tmp_path / "specs", tmp_path / "state"
    specs.mkdir()
    mark = f"tls-{os.getpid()}"
    (specs / "plain.toml").write_text(sleeper(mark))
    trusting = {**os.environ, "SSL_CERT_FILE": str(certificates / "ca.pem")}
    daemon = start_daemon(
        specs=specs, state=state, stderr_path=tmp_path / "stderr", env=trusting
    )
    try:
        wait_for(lambda: len(marked_pids(mark)) == 1, timeout=30, message="plain running")
        held = [file for file in files if file in mapped(daemon.pid)]
        assert held == [], f"before any https probe, the daemon has loaded {held}"

        with https_server(certificates) as port:
            probe = f'[ready_check]\nhttp = "https://127.0.0.1:{port}/ready"\n'
            (specs / "web.toml").write_text(sleeper(mark, probe + "interval_seconds = 0.2\n"))

            def web() -> dict[str, object]:
                shown = subprocess.run(
                    [RECONCILER, "status", "--json", "--socket", str(state / "api.sock")],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                assert shown.returncode == 0, shown.stderr
                data = json.loads(shown.stdout)
                collectors = data["collectors"] if isinstance(data, dict) else data
                return next((c for c in collectors if c["id"] == "web"), {})

            wait_for(lambda: web().get("ready") is True, timeout=30, message="web ready")
        # The probe loaded ssl, and with it OpenSSL; hashlib still does without.
        assert [file in mapped(daemon.pid) for file in files] == [True, False]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, (tmp_path / "stderr").read_text()
    finally:
        end_daemon(daemon, mark)
