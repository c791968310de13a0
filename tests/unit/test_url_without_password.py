"""A probe URL as answers and messages show it: never its password, whatever the URL."""

from __future__ import annotations

import pytest

from reconciler.spec.models import url_without_password


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h/x", "https://h/x"),
        ("http://u@h/x", "http://u@h/x"),
        ("http://u:s3cret@h:81/x?y=1", "http://u:***@h:81/x?y=1"),
        ("http://:s3cret@h/", "http://:***@h/"),
        ("http://u:s3:cr@t@h/", "http://u:***@h/"),
        # urlsplit refuses an unclosed bracket: the whole user part goes.
        ("http://u:s3cret@[::1/x", "http://***@[::1/x"),
    ],
)
def test_the_password_never_shows(url: str, shown: str) -> None:
    assert url_without_password(url) == shown
    assert "s3" not in url_without_password(url)
