"""Issue 11, point 6: a path is checked once, before routing, and the URL
sent upstream never leaves the upstream's base URL."""

import httpx
import pytest

from ctxwarden.config import Upstream
from ctxwarden.errors import BadPath
from ctxwarden.routing import Target, check_path
from ctxwarden.upstream import upstream_url

REFUSED = [
    b"/v1/x/../chat/completions", b"/v1/../_ctxwarden/config", b"/v1/%2e%2e/%2e%2e/admin",
    b"/v1/%2E%2E/x", b"/v1/.%2e/x", b"/v1/%2e./x", b"/v1/./models", b"/v1/%2e/models", b"/v1/..",
    b"/v1/..;x/admin", b"/v1/files%2fx", b"/v1/files%2F..%2Fx", b"/v1/files%5cx", b"/v1/files%5Cx", b"/v1/files\\x",
]


@pytest.mark.parametrize("raw", REFUSED)
def test_dot_segments_and_encoded_slashes_are_refused(raw):
    with pytest.raises(BadPath):
        check_path(raw)


@pytest.mark.parametrize("raw, forwarded, decoded", [
    (b"/v1/chat/completions", "/v1/chat/completions", "/v1/chat/completions"),
    (b"/v1/files/a%20b", "/v1/files/a%20b", "/v1/files/a b"),
    (b"/v1/x%3Fy", "/v1/x%3Fy", "/v1/x?y"),
    (b"/v1/files/file..name/.hidden", "/v1/files/file..name/.hidden", "/v1/files/file..name/.hidden"),
    (b"/v1/a#b", "/v1/a%23b", "/v1/a#b"),
    (b"/v1/caf\xc3\xa9", "/v1/caf%C3%A9", "/v1/caf\u00e9"),
])
def test_accepted_paths_keep_the_clients_escapes(raw, forwarded, decoded):
    path = check_path(raw)
    assert (path.raw, path.decoded) == (forwarded, decoded)


def test_a_targets_repr_never_shows_its_key():
    assert "sk-secret" not in repr(Target(Upstream("o", "openai", "http://upstream.test"), "sk-secret"))


def test_url_sent_upstream_never_leaves_the_base_url():
    base = "http://upstream.test/prefix"
    assert httpx.URL(upstream_url(base, "/v1/files/a%20b", b"q=%2e%2e")).raw_path == b"/prefix/v1/files/a%20b?q=%2e%2e"
    assert httpx.URL(upstream_url(base, "/v1/files/a%20b", b"")).raw_path == b"/prefix/v1/files/a%20b"
    # check_path refuses these at the door; the guard holds even without it, with a query or without
    for path in ("/v1/../../admin", "/v1/./models"):
        for query in (b"", b"q=1"):
            with pytest.raises(BadPath):
                upstream_url(base, path, query)
