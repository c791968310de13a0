"""Where the time of one ``reconciler status`` goes, against a running daemon.

Run: ``.venv/bin/python bench/status_cost.py --socket S/api.sock [--venv V] [--runs 40]``
with a daemon already running (``reconciler run --specs D --state-dir S --socket S/api.sock
--metrics-address 127.0.0.1:0``). Prints the median wall time (ms) of:

- the interpreter alone: ``python -c pass``, ``-S`` (no site), ``-I`` (isolated);
- ``python -c "import reconciler.cli"`` and the console script's ``--version`` (start-up and
  imports, no request);
- ``reconciler status`` (the console script) and ``reconciler status --json``;
- in this process, after a warm-up: the request alone (the client's own code, and a bare
  HTTP/1.1 exchange on the socket), the JSON decode, and the table's formatting.

``--venv`` picks the install measured (default: the venv running this script). The
difference between the bare exchange and the client's call is the client's overhead; the bare
exchange is mostly the daemon's answer (its ``views()`` and JSON encoding).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def median_ms(run: Callable[[], object], runs: int) -> tuple[float, float]:
    run()  # warm-up: page cache, the daemon's first answer
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[0]


def command(argv: list[str]) -> Callable[[], object]:
    def run() -> None:
        # cwd "/": ``python -c`` puts the cwd first on sys.path, which in a checkout would
        # import the working tree's package instead of the venv's.
        subprocess.run(
            argv, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd="/", check=True
        )

    return run


def bare_exchange(socket_path: str) -> bytes:
    """One GET of the collectors, HTTP/1.1 ``Connection: close``, read to EOF."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
        sock.sendall(
            b"GET /api/v1/collectors HTTP/1.1\r\nHost: reconciler\r\nConnection: close\r\n\r\n"
        )
        chunks = []
        while chunk := sock.recv(262144):
            chunks.append(chunk)
    finally:
        sock.close()
    return b"".join(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--venv", type=Path, default=Path(sys.executable).parent.parent)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    venv = args.venv.absolute()  # the commands run in "/"
    python = str(venv / "bin" / "python")
    script = str(venv / "bin" / "reconciler")
    sock = args.socket
    rows: list[tuple[str, Callable[[], object]]] = [
        ("python -c pass", command([python, "-c", "pass"])),
        ("python -S -c pass", command([python, "-S", "-c", "pass"])),
        ("python -I -c pass", command([python, "-I", "-c", "pass"])),
        ("python -c 'import reconciler.cli'", command([python, "-c", "import reconciler.cli"])),
        ("reconciler --version", command([script, "--version"])),
        ("reconciler status", command([script, "status", "--socket", sock])),
        ("reconciler status --json", command([script, "status", "--json", "--socket", sock])),
    ]
    # In this process, the package of the venv running the script.
    from reconciler.cli.client import Client
    from reconciler.cli.status import format_status_table

    client = Client(sock)
    raw = bare_exchange(sock)
    body = raw.partition(b"\r\n\r\n")[2]
    data = client.call("GET", "/collectors")
    rows += [
        ("in process: bare HTTP/1.1 exchange", lambda: bare_exchange(sock)),
        ("in process: Client.call GET /collectors", lambda: client.call("GET", "/collectors")),
        ("in process: json.loads of the body", lambda: json.loads(body)),
        ("in process: format_status_table", lambda: format_status_table(data["collectors"])),
        ("in process: json.dumps(indent=2)", lambda: json.dumps(data, indent=2)),
    ]
    print(f"venv {args.venv}; {len(data['collectors'])} collectors; body {len(body)} bytes")
    print(f"{'what':45} {'median ms':>10} {'min ms':>8}  (n={args.runs})")
    for name, run in rows:
        median, least = median_ms(run, args.runs)
        print(f"{name:45} {median:10.1f} {least:8.1f}")


if __name__ == "__main__":
    main()
