"""ProtectedContent against a real local HTTP server (the list format of spec §6.2)."""
import json
import threading

import pytest

from appliance.protected import ProtectedContent, ProtectedListError
from tests.servers.http import Route
from tests.servers.ports import free_port

A, B, C = "a" * 96, "b" * 96, "c" * 96
PATH = "/file/list_protected"


def listing(*hashes: str, success: bool = True) -> bytes:
    return json.dumps({"success": success, "error": "" if success else "boom",
                       "data": [{"sd_hash": h, "claim_id": "0" * 40} for h in hashes]}).encode()


def test_listed_hashes_are_protected_and_the_list_is_cached(http_server):
    http_server.routes[PATH] = Route(200, listing(A, B.upper()))
    protected = ProtectedContent(http_server.url(PATH))
    assert protected.is_protected(A) and protected.is_protected(B) and not protected.is_protected(C)
    for _ in range(20):
        protected.is_protected(C)
    assert http_server.count(PATH) == 1  # cached for the ttl
    every_time = ProtectedContent(http_server.url(PATH), ttl=0)
    every_time.is_protected(A)
    every_time.is_protected(A)
    assert http_server.count(PATH) == 3


def test_empty_url_protects_nothing(http_server):
    assert not ProtectedContent("").is_protected(A)
    assert not ProtectedContent("", fail_closed=True).is_protected(A)


def test_concurrent_first_fetch_is_one_request(http_server):
    http_server.routes[PATH] = Route(200, listing(A), hang=0.5)
    protected = ProtectedContent(http_server.url(PATH))
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(protected.is_protected(A))) for _ in range(10)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert answers == [True] * 10  # everyone waited for the one fetch
    assert http_server.count(PATH) == 1


def test_a_hanging_server_times_out_and_is_not_hammered(http_server):
    http_server.routes[PATH] = Route(200, listing(A), hang=30)
    open_ = ProtectedContent(http_server.url(PATH), timeout=0.3, retry_after=3600)
    with pytest.raises(ProtectedListError, match="timeout"):
        open_.fetch()
    assert not open_.is_protected(A)  # fail open, as reflector.go
    for _ in range(5):
        assert not open_.is_protected(A)
    closed = ProtectedContent(http_server.url(PATH), fail_closed=True, timeout=0.3, retry_after=3600)
    assert closed.is_protected(C)  # unknown: everything needs the edge token
    assert http_server.count(PATH) == 3  # one per fetch, then no retry before retry_after


@pytest.mark.parametrize("route, reason", [
    (Route(200, b"<html>nope</html>", content_type="text/html"), "not JSON"),
    (Route(200, b"[1, 2]"), "not a JSON object"),
    (Route(200, listing(A, success=False)), "boom"),
    (Route(200, json.dumps({"success": True, "data": {"sd_hash": A}}).encode()), "not a list"),
    (Route(200, json.dumps({"success": True, "data": [{"sd_hash": "xyz"}]}).encode()), "invalid entry"),
    (Route(500, b"{}"), "unexpected status code 500"),
])
def test_garbage_is_an_error_and_the_last_good_list_stays(http_server, route, reason):
    http_server.routes[PATH] = Route(200, listing(A))
    protected = ProtectedContent(http_server.url(PATH), ttl=0, retry_after=0)
    assert protected.is_protected(A)
    http_server.routes[PATH] = route
    with pytest.raises(ProtectedListError, match=reason):
        protected.fetch()
    assert protected.is_protected(A) and not protected.is_protected(C)  # last good list in force
    assert not ProtectedContent(http_server.url(PATH)).is_protected(A)  # never had a list: fail open
    http_server.routes[PATH] = Route(200, listing(C))
    assert protected.is_protected(C) and not protected.is_protected(A)  # recovered


def test_unreachable_list_is_a_one_line_error():
    with pytest.raises(ProtectedListError, match="Connection refused") as info:
        ProtectedContent(f"http://127.0.0.1:{free_port()}/list").fetch()
    assert "\n" not in str(info.value)
