"""``MetricsServer``: ``/metrics``, ``/healthz`` and ``/readyz`` on the read-only TCP listener."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from reconciler.errors import InvalidSpec, Io
from reconciler.http import HttpServer, Request, Response, Router, text_response
from reconciler.loop import Reconciler
from reconciler.metrics.collector import ReconcilerCollector
from reconciler.metrics.constants import CONTENT_TYPE, SLOW_SCRAPE_SECONDS
from reconciler.metrics.exposition import Exposition
from reconciler.metrics.families import Registry, pieces

log = logging.getLogger("reconciler.metrics")

# -- the listener ---------------------------------------------------------------------


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (RFC 9110 §12.5.3: ``q=0`` refuses)."""
    allowed: dict[str, bool] = {}
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        allowed[coding.strip()] = quality > 0
    return allowed.get("gzip", allowed.get("x-gzip", allowed.get("*", False)))


def _refusal(status: int, message: str) -> Response:
    return text_response(message + "\n", status=status)


def parse_address(address: str) -> tuple[str | None, int]:
    """``HOST:PORT`` (``[::1]:9184`` for IPv6; an empty host: every interface)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidSpec(f"metrics_address {address!r}: expected HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), int(port)


_YOUNG_COLLECTIONS_IN_A_SCRAPE = 3
"""Youngest-generation collections a scrape may bring on (1 at 1000 collectors, measured)."""


def _collect_young() -> None:
    """Collect the young generations before a scrape, so that none is collected during it.

    At 1000 collectors a scrape keeps ~1000 objects alive until it ends. A
    collection of the middle generation during that time moves them to the
    oldest, and every 60-70 scrapes that brought on a full collection (40-140
    ms at ~110 000 objects) inside one. Collecting first (what the collector
    would soon do anyway; ~0.02 ms) leaves the counts low, so no such
    collection runs during a scrape that keeps fewer than ~7000 objects alive.

    Only the youngest generation, unless the middle one's turn would come
    during the scrape: what survives a middle collection counts towards the
    next full one, and at the start of a scrape that is the request being
    answered (its handler, task and buffers). Collecting the middle one at
    every scrape moved those to the oldest every time; now once in ~8 scrapes.
    No setting is changed; a process that turned automatic collection off is
    left so.
    """
    threshold_0, threshold_1, _ = gc.get_threshold()
    if threshold_0 <= 0:
        return
    _, young_collections, _ = gc.get_count()
    due = young_collections + _YOUNG_COLLECTIONS_IN_A_SCRAPE >= threshold_1
    gc.collect(1 if due else 0)


class MetricsServer:
    """The read-only metrics listener of DESIGN §8: ``/metrics``, ``/healthz``, ``/readyz``.

    Everything runs in the event loop thread: a scrape reads in-memory state
    and ``/proc``, and costs the loop nothing between scrapes.
    """

    def __init__(self, reconciler: Reconciler, *, address: str) -> None:
        self.reconciler = reconciler
        self.address = address
        self.host, self.port = parse_address(address)
        self.registry = Registry()
        self.collector = ReconcilerCollector(reconciler)
        self.registry.register(self.collector)
        self.last_scrape_seconds = 0.0
        self._exposition = Exposition()
        self.collect_young_first = True
        """Collect the young generations before each scrape (see ``scrape``)."""
        self._http: HttpServer | None = None

    async def start(self) -> tuple[str, int]:
        """Listen; return the bound host and port (the port picked when 0)."""
        router = Router()
        router.add("GET", "/metrics", self._metrics)
        router.add("GET", "/healthz", self._healthz)
        router.add("GET", "/readyz", self._readyz)

        async def handle(request: Request) -> Response:
            return await router.resolve(request)(request)

        http = HttpServer(handle, refusal=_refusal, log=log, label="metrics", max_body_bytes=0)
        try:
            listener = await http.serve_tcp(self.host, self.port)
        except OSError as exc:
            await http.close()
            raise Io(f"cannot listen on {self.address}: {exc.strerror or exc}") from exc
        self._http = http
        sockname = listener.sockets[0].getsockname()
        host, port = str(sockname[0]), int(sockname[1])
        log.info(
            "metrics on http://%s/metrics", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        )
        return host, port

    async def stop(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()
        self.collector.close()

    def scrape(self, *, gzip: bool = False) -> bytes:
        """The exposition of the registry now (what ``GET /metrics`` returns), gzipped if asked."""
        started = time.perf_counter()
        if self.collect_young_first and gc.isenabled():
            _collect_young()
        families = pieces(self.registry)
        exposition = self._exposition
        body = exposition.gzip(families) if gzip else exposition.plain(families)
        self.last_scrape_seconds = elapsed = time.perf_counter() - started
        if elapsed > SLOW_SCRAPE_SECONDS:
            log.warning("a metrics scrape took %.2f s in the event loop", elapsed)
        return body

    async def _metrics(self, request: Request) -> Response:
        gzip = accepts_gzip(request.headers.get("accept-encoding", ""))
        headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if gzip:
            # Prometheus asks for it. Compressed here, in the loop: only the
            # families whose text changed since the last scrape (``Exposition``).
            headers["Content-Encoding"] = "gzip"
        return Response(200, self.scrape(gzip=gzip), headers)

    async def _healthz(self, request: Request) -> Response:
        if self.loop_alive():
            return text_response("ok\n")
        return text_response("reconcile loop not running\n", status=503)

    async def _readyz(self, request: Request) -> Response:
        if self.reconciler.ready.is_set():
            return text_response("ready\n")
        return text_response("first reconcile not done\n", status=503)

    def loop_alive(self) -> bool:
        """Whether the reconcile loop is running (passing, or waiting to be woken).

        Not "passed recently": the loop only runs a pass when something may
        differ, and may rightly sleep for hours. A pass is synchronous, so a
        loop stuck in one would block this handler too; what can go wrong is
        ``run()`` having ended. ``Reconciler.alive`` says so where it exists;
        else the loop's task is looked for among the event loop's tasks.
        """
        alive = getattr(self.reconciler, "alive", None)
        if alive is not None:
            return bool(alive() if callable(alive) else alive)
        run_code = Reconciler.run.__code__
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            frame = getattr(coro, "cr_frame", None)
            if (
                getattr(coro, "cr_code", None) is run_code
                and frame is not None
                and frame.f_locals.get("self") is self.reconciler
            ):
                return True
        return False
