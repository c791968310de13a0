"""The exporter's text without a reconciler: what it keeps between scrapes changes no byte.

``CollectorBlocks`` keeps each collector's lines from scrape to scrape, and
``Exposition`` each family's encoded and compressed text: after any sequence
of scrapes, what they give must be what ``generate_latest`` writes for the same
samples, and what a gzip reader reads must be the plain text.
"""

from __future__ import annotations

import gzip
import math
import os
import random
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from reconciler.metrics import TextFamily, accepts_gzip
from reconciler.metrics.blocks import CollectorBlocks, Static
from reconciler.metrics.constants import CONTENT_TYPE, go_float
from reconciler.metrics.exposition import Exposition
from reconciler.metrics.families import value_text
from reconciler.metrics.samples import KeptFiles


class Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def static(collector_id: str, **changes: object) -> Static:
    values: dict[str, object] = {
        "collector_id": collector_id,
        "collector_type": "procmond",
        "state": "running",
        "desired": "running",
        "health": "healthy",
        "up": 1,
        "start_time": 1_700_000_000.25,
        "restarts": 0,
        "last_exit_code": None,
        "applied_hash": "0123456789abcdef",
        "ready": 1,
    }
    values.update(changes)
    return Static(**values)  # type: ignore[arg-type]


def scrape(
    blocks: CollectorBlocks, collectors: list[tuple[Static, float, float, float, float]]
) -> str:
    """One scrape of ``collectors``; checks the text against generate_latest, returns it."""
    for key, uptime, backoff, cpu, rss in collectors:
        blocks.add(
            key, uptime_seconds=uptime, backoff_seconds=backoff, cpu_seconds=cpu, rss_bytes=rss
        )
    families = blocks.families()
    assert all(isinstance(family, TextFamily) for family in families)
    text = "".join(family.text() for family in families)
    assert text.encode() == generate_latest(Families(list(families)))
    return text


def test_value_text_is_float_to_go_string() -> None:
    rng = random.Random(9)
    values: list[float] = [
        1, 0, 0.5, -1, -2.5, 3, 1e-7, 999_999.999, 1e6, 1_000_000.5, 268_435_456, 2**53,
        1e21, 1e-300, 1.7976931348623157e308, -1e6, -1e21, math.inf, -math.inf,
        123.456789012345,
    ]  # fmt: skip
    values += [rng.uniform(0, 2e6) for _ in range(2000)]
    values += [rng.uniform(-1e7, 1e7) for _ in range(500)]
    values += [float(rng.randrange(0, 2**40)) for _ in range(500)]
    values += [rng.randrange(0, 2**34) for _ in range(200)]  # ints: RSS bytes, counts
    for value in values:
        assert value_text(value) == floatToGoString(value), value
        assert go_float(value) == floatToGoString(value), value
    assert value_text(math.nan) == floatToGoString(math.nan) == "NaN"
    assert go_float(math.nan) == "NaN"


@given(st.floats(allow_nan=False) | st.integers(min_value=-(2**60), max_value=2**60))
def test_go_float_is_float_to_go_string(value: float) -> None:
    assert go_float(value) == floatToGoString(value)


def test_the_content_type_is_prometheus_clients_latest() -> None:
    assert CONTENT_TYPE == CONTENT_TYPE_LATEST


def test_blocks_write_what_generate_latest_writes_scrape_after_scrape() -> None:
    blocks = CollectorBlocks()
    a, b, c = static("a"), static("b", state="backoff", up=0, start_time=None), static("c")
    first = scrape(blocks, [(a, 10.0, 0.0, 0.5, 4e6), (b, 0.0, 2.5, 1.0, 0.0), (c, 1.0, 0, 0, 0)])
    assert blocks.rewritten == 3
    # Only what moves changes: no block is written again.
    second = scrape(
        blocks, [(a, 11.0, 0.0, 0.5, 4e6), (b, 0.0, 1.5, 1.0, 0.0), (c, 2.0, 0, 0, 0)]
    )
    assert blocks.rewritten == 0
    assert blocks.rejoined == 2, "only the uptime and backoff families are joined again"
    assert first != second
    # A crash: new state, exit code, restart count; a new type relabels every line of c.
    a2 = static("a", state="starting", up=0, restarts=1, last_exit_code=-9, ready=0)
    c2 = static("c", collector_type="netmond", applied_hash=None)
    text = scrape(blocks, [(a2, 0.0, 0.0, 0.75, 5e6), (b, 0.0, 1.0, 1.0, 0.0), (c2, 3.0, 0, 0, 0)])
    assert blocks.rewritten == 2
    assert 'id="c",type="procmond"' not in text and 'id="c",type="netmond"' in text
    assert 'reconciler_collector_last_exit_code{id="a",type="procmond"} -9.0' in text
    # b goes: its lines go, and come back fresh if it returns.
    text = scrape(blocks, [(a2, 1.0, 0.0, 0.75, 5e6), (c2, 4.0, 0, 0, 0)])
    assert 'id="b"' not in text
    text = scrape(blocks, [(a2, 2.0, 0.0, 0.75, 5e6), (b, 0.0, 0.5, 1.0, 0.0), (c2, 5.0, 0, 0, 0)])
    assert blocks.rewritten == 1 and 'reconciler_collector_backoff_seconds{id="b"' in text
    # No collector: each family is its two header lines.
    lines = scrape(blocks, []).splitlines()
    assert len(lines) == 2 * 13 and all(line.startswith("# ") for line in lines)


def test_blocks_samples_are_those_of_their_scrape() -> None:
    blocks = CollectorBlocks()
    blocks.add(static("a"), uptime_seconds=1.0, backoff_seconds=0, cpu_seconds=2, rss_bytes=3)
    families = {family.name: family for family in blocks.families()}
    # A later scrape does not change the families an earlier one gave.
    blocks.add(static("a", restarts=5), uptime_seconds=9, backoff_seconds=0, cpu_seconds=9,
               rss_bytes=9)  # fmt: skip
    blocks.families()
    uptime = families["reconciler_collector_uptime_seconds"].samples
    assert [(s.labels, s.value) for s in uptime] == [({"id": "a", "type": "procmond"}, 1.0)]
    restarts = families["reconciler_collector_restarts"].samples
    assert [s.value for s in restarts] == [0]
    state = families["reconciler_collector_state"].samples
    assert {s.labels["state"]: s.value for s in state}["running"] == 1
    assert sum(s.value for s in state) == 1


def test_blocks_escape_labels_as_generate_latest_does() -> None:
    blocks = CollectorBlocks()
    odd = static("a", collector_type='we"ird\\type\nx y', applied_hash='h"1')
    text = scrape(blocks, [(odd, 1.0, 0.0, 0.0, 0.0)])
    # A space in a label: the values that move are rewritten after the line's last space.
    text = scrape(blocks, [(odd, 2.0, 1.0, 3.0, 4.0)])
    parsed = {
        sample.labels.get("type")
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert parsed == {'we"ird\\type\nx y'}


@pytest.mark.parametrize(
    ("change", "reused"),
    [("none", 6), ("one", 5), ("all", 0), ("fewer", 3), ("more", 6)],
)
def test_gzip_is_the_plain_text_as_one_member(change: str, reused: int) -> None:
    rng = random.Random(change)
    texts = [
        "".join(f"line_{i}_{rng.random()}\n" for i in range(rng.randrange(0, 3000)))
        for _ in range(6)
    ]
    exposition = Exposition()
    assert gzip.decompress(exposition.gzip(texts)) == "".join(texts).encode()
    if change == "one":
        texts[2] = texts[2] + "more\n"
    elif change == "all":
        texts = [text[::-1] + "x" for text in texts]
    elif change == "fewer":
        texts = texts[:3]
    elif change == "more":
        texts = [*texts, "extra\n", ""]
    body = exposition.gzip(texts)
    assert exposition.reused == reused
    # One member, as a single-member reader (zlib's, aiohttp's) reads it.
    reader = zlib.decompressobj(wbits=31)
    assert reader.decompress(body) + reader.flush() == "".join(texts).encode()
    assert reader.eof and reader.unused_data == b""
    assert exposition.plain(texts) == "".join(texts).encode()
    assert exposition.reused == len(texts)


def test_gzip_tells_the_blocks_families_apart_by_revision() -> None:
    """An unchanged family is reused by its revision, and never served stale."""
    blocks, exposition = CollectorBlocks(), Exposition()

    def body(*keys: Static, uptime: float) -> tuple[bytes, str]:
        for key in keys:
            blocks.add(key, uptime_seconds=uptime, backoff_seconds=0, cpu_seconds=1, rss_bytes=2)
        families = blocks.families()
        gzipped = exposition.gzip(families)
        return gzip.decompress(gzipped), "".join(family.text() for family in families)

    a, b = static("a"), static("b")
    first, text = body(a, b, uptime=1.0)
    assert first == text.encode() and exposition.reused == 0
    again, text = body(a, b, uptime=2.0)
    assert again == text.encode() and again != first
    assert exposition.reused == 12, "all but the uptime family kept from the last body"
    # Another reader of the blocks (an embedder's registry) between two scrapes: the
    # blocks' revisions move on, the exposition's part is older and not reused.
    body_of_other = [(static("a", state="stopped", up=0), 3.0), (b, 3.0)]
    for key, uptime in body_of_other:
        blocks.add(key, uptime_seconds=uptime, backoff_seconds=0, cpu_seconds=1, rss_bytes=2)
    blocks.families()
    later, text = body(static("a", state="stopped", up=0), b, uptime=4.0)
    assert later == text.encode()
    assert 'reconciler_collector_up{id="a",type="procmond"} 0.0' in later.decode()
    assert exposition.reused < 12
    # No add(): no collector. The plain body after gzip bodies is its own text too.
    families = blocks.families()
    assert exposition.plain(families) == "".join(family.text() for family in families).encode()
    assert b'id="a"' not in exposition.plain(families)


def test_gzip_after_plain_bodies_that_changed_an_earlier_part() -> None:
    """The CRC kept for a part is that of the parts before it when it was computed."""
    exposition = Exposition()
    first, second, third = ["a\n", "b\n", "c\n"], ["A\n", "b\n", "c\n"], ["a\n", "b\n", "C\n"]
    for texts in (first, second, first, third, third, second, first):
        for encode in (exposition.plain, exposition.gzip, exposition.plain, exposition.gzip):
            body = encode(texts)
            plain = gzip.decompress(body) if encode == exposition.gzip else body
            assert plain == "".join(texts).encode()


def test_kept_files_read_anew_and_close_what_is_not_read(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("one")
    second.write_text("two")
    files = KeptFiles(max_open=1)
    assert files.read("first", str(first), 100) == b"one"
    assert files.read("second", str(second), 100) == b"two"
    assert len(files) == 1, "only as many open as allowed"
    first.write_text("uno")
    assert files.read("first", str(first), 100) == b"uno", "read from the start each time"
    assert files.read("gone", str(tmp_path / "missing"), 100) is None
    files.sweep()
    assert len(files) == 1
    closes = files.closes
    files.sweep()  # nothing read since the last sweep
    assert len(files) == 0
    # A descriptor held elsewhere (TreeReader's fast path) is trusted only while
    # nothing was closed: its number may be another file's now.
    assert files.closes == closes + 1
    big = tmp_path / "big"
    big.write_bytes(os.urandom(10_000))
    assert files.read_all("big", str(big), 4096) == big.read_bytes()
    assert files.read_all("big", str(big), 4096) == big.read_bytes()  # kept now
    files.close()
    assert len(files) == 0


@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [
        pytest.param("gzip", True, id="gzip"),
        pytest.param("deflate, gzip;q=1.0, *;q=0.5", True, id="prometheus"),
        pytest.param("GZIP", True, id="case"),
        pytest.param("gzip;q=0", False, id="refused"),
        pytest.param("*", True, id="any"),
        pytest.param("*;q=1, gzip;q=0", False, id="any-but-gzip"),
        pytest.param("", False, id="none"),
        pytest.param("br, deflate", False, id="others"),
        pytest.param("gzip;q=bad", False, id="bad-quality"),
        pytest.param("x-gzip", True, id="x-gzip"),
    ],
)
def test_accept_encoding(header: str, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok
