"""Which directory entries the spec source takes as spec files (``_spec_id``)."""

from __future__ import annotations

import pytest

from reconciler.errors import InvalidSpec
from reconciler.source.scan import _spec_id


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("web.toml", "web", id="spec"),
        pytest.param("db-1.2_x.toml", "db-1.2_x", id="id-punctuation"),
        pytest.param("a..toml", "a.", id="dot-before-suffix"),
        pytest.param(".web.toml", None, id="dotfile"),
        pytest.param(".web.toml.tmp", None, id="hidden-temp-save"),
        pytest.param("..data", None, id="configmap-data-link"),
        pytest.param("..2026_11_26_10_00_00.123", None, id="configmap-timestamp-dir"),
        pytest.param(".toml", None, id="bare-suffix-is-hidden"),
        pytest.param("web.toml~", None, id="backup"),
        pytest.param("web.toml.swp", None, id="vim-swap"),
        pytest.param("web.toml.tmp", None, id="temp"),
        pytest.param("web.toml.4913~", None, id="ansible-style-temp"),
        pytest.param("#web.toml#", None, id="emacs-autosave"),
        pytest.param("web.yaml", None, id="other-suffix"),
        pytest.param("README", None, id="no-suffix"),
        pytest.param("web.TOML", None, id="suffix-is-case-sensitive"),
    ],
)
def test_spec_id(name: str, expected: str | None) -> None:
    assert _spec_id(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Web.toml", id="capital"),
        pytest.param("my web.toml", id="space"),
        pytest.param("-web.toml", id="leading-dash"),
        pytest.param("web\n.toml", id="newline"),
        pytest.param("#web.toml", id="hash-prefix"),
        pytest.param("x" * 64 + ".toml", id="too-long"),
        pytest.param("caf\udcc3.toml", id="undecodable-bytes"),
    ],
)
def test_a_toml_file_with_a_bad_name_is_an_error_not_ignored(name: str) -> None:
    with pytest.raises(InvalidSpec) as raised:
        _spec_id(name)
    assert "file name" in raised.value.message
    raised.value.message.encode()  # printable: undecodable bytes are escaped
