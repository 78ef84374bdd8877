"""The :2112 endpoint's server on its own (appliance/metrics_server.py): answers, limits and timeouts."""
from __future__ import annotations

import http.client
import socket
import threading

import pytest

from appliance.metrics_server import MetricsServer
from tests.appliance_process import poll


@pytest.fixture
def server():
    srv = MetricsServer("127.0.0.1", 0, lambda: b"reflector_up 1\n", timeout=0.5, max_connections=4).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv: MetricsServer, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_answers_metrics_and_refuses_the_rest(server):
    assert request(server, "GET", "/metrics") == (200, b"reflector_up 1\n")
    assert request(server, "GET", "/metrics?name[]=x") == (200, b"reflector_up 1\n")
    assert request(server, "HEAD", "/metrics") == (200, b"")
    assert request(server, "GET", "/")[0] == 404
    assert request(server, "POST", "/metrics")[0] == 405
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * 10000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")


def test_idle_connections_are_capped_and_closed_and_scrapes_still_answer(server):
    threads = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    try:
        assert len(server.conns) <= 4
        assert request(server, "GET", "/metrics")[0] == 200  # pushes out the oldest idle connection
        assert threading.active_count() == threads  # no thread per connection
        for sock in idle:
            sock.settimeout(5)
            assert sock.recv(1) == b""  # closed by the server: pushed out, or after the timeout
        poll(lambda: not server.conns, 5, "every connection closed")
    finally:
        for sock in idle:
            sock.close()


def test_a_render_failure_is_a_500_and_the_endpoint_lives_on():
    calls = []

    def render() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("collector broke")
        return b"ok\n"

    srv = MetricsServer("127.0.0.1", 0, render, timeout=1).start()
    try:
        assert request(srv, "GET", "/metrics") == (500, b"internal server error\n")
        assert request(srv, "GET", "/metrics") == (200, b"ok\n")
    finally:
        srv.shutdown()
        srv.server_close()
