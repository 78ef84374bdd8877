"""Issue 15, process and operator side, against a real `prism reflector`: out-of-range settings refused at
start and on HUP without a fork storm, a reload whose workers cannot boot rolled back with the old workers
serving, a bounded :2112, no planted secret in status, logs or 500 bodies, and operator messages that
say what happened."""
from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.appliance_process import (
    Appliance,
    Load,
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    free_ports,
    http_status,
    pid_alive,
    poll,
    write_blobs,
)

OUT_OF_RANGE = [("workers", "-5", "0 to 100"), ("dht_port", "70000", "0 to 65535"),
                ("heartbeat_timeout", "0", "> 0"), ("request_queue_size", "0", ">= 1")]


def child_starts(app: Appliance) -> int:
    return app.log().count(" started ")


def write_conf(path: Path, **values) -> Path:
    path.write_text("".join(f"{key} = {value}\n" for key, value in values.items()))
    return path


def test_out_of_range_values_at_start_exit_non_zero_with_one_line_and_start_nothing(tmp_path):
    for key, value, allowed in OUT_OF_RANGE:
        conf = write_conf(tmp_path / f"{key}.toml", **{key: value})
        app = Appliance(tmp_path / key, ("--conf", str(conf)))
        app.start(wait=False)
        assert app.wait_exit() != 0
        lines = [line for line in app.log().splitlines() if line.strip()]
        assert len(lines) == 1 and key in lines[0] and allowed in lines[0], lines
        assert not (app.runtime_dir / "control.sock").exists()
    flag = Appliance(tmp_path / "flag", ("--workers", "-5")).start(wait=False)
    assert flag.wait_exit() == 2 and "workers = -5 is out of range" in flag.log()


def test_out_of_range_values_on_hup_keep_the_running_config_without_a_fork_storm(appliance, tmp_path):
    conf = write_conf(tmp_path / "appliance.toml", workers="2", storage_dir=f'"{tmp_path / "blobs"}"')
    blobs = write_blobs(tmp_path / "blobs", 4, 100_000)
    app = appliance("--conf", str(conf))
    workers = app.worker_pids()
    for number, (key, value, allowed) in enumerate(OUT_OF_RANGE, 1):
        write_conf(conf, **{"workers": "2", "storage_dir": f'"{tmp_path / "blobs"}"', key: value})
        app.signal(signal.SIGHUP)
        poll(lambda n=number: app.log().count("reload: keeping the running config") >= n, 20, f"the HUP with {key}")
        line = app.log().splitlines()[-1]
        assert key in line and allowed in line, line
    result = app.ctl("reload")
    assert result.returncode == 1 and "reload failed: the new config was refused: request_queue_size" in result.stderr
    status = app.status()
    assert status["state"] == "ready" and app.worker_pids() == workers
    assert status["last_reload"]["ok"] is False
    assert all(http_status(app, h)[0] == 200 for h in blobs)
    assert child_starts(app) < 10, app.log()


def test_a_reload_whose_workers_cannot_boot_keeps_the_old_workers_serving(appliance, tmp_path):
    blobs = write_blobs(tmp_path / "blobs", 8, 500_000)
    good = dict(workers="2", storage_dir=f'"{tmp_path / "blobs"}"', graceful_timeout="10")
    conf = write_conf(tmp_path / "appliance.toml", **good)
    app = appliance("--conf", str(conf))
    old = app.worker_pids()
    manager = app.pids("cache-manager")
    (tmp_path / "not-a-dir").write_text("a file where the new storage directory should be")
    # Valid as a setting, fatal at boot: the storage directory cannot be created under a file.
    write_conf(conf, **{**good, "storage_dir": f'"{tmp_path / "not-a-dir" / "blobs"}"'})
    load = Load(app.ports["http"], blobs, threads=3)
    try:
        load.wait_count(20)
        result = app.ctl("reload")
        load.wait_count(20)
    finally:
        records = load.stop()
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "reload failed: worker-" in result.stderr and "not-a-dir" in result.stderr, result.stderr
    assert [r for r in records if r[2] is not None] == []
    status = app.status()
    assert status["state"] == "ready" and app.worker_pids() == old and app.pids("cache-manager") == manager
    assert status["last_reload"]["ok"] is False and "not-a-dir" in status["last_reload"]["error"]
    assert str(tmp_path / "blobs") == status["config"]["values"]["storage_dir"]  # the running config stays
    assert "reload failed" in app.log()
    table = app.ctl("status").stdout
    assert "reload  FAILED" in table and "not-a-dir" in table, table

    write_conf(conf, **good)  # fixed: the next reload goes through and replaces every worker
    result = app.ctl("reload")
    assert result.returncode == 0 and "reload: done" in result.stdout, (result.stdout, result.stderr)
    assert set(app.worker_pids().values()).isdisjoint(old.values())
    assert all(http_status(app, h)[0] == 200 for h in list(blobs)[:3])
    assert child_starts(app) < 12, app.log()


def test_a_reload_whose_http3_process_cannot_boot_is_rolled_back(appliance, tmp_path):
    good = dict(workers="1", storage_dir=f'"{tmp_path / "blobs"}"', graceful_timeout="10")
    conf = write_conf(tmp_path / "appliance.toml", **good)
    app = appliance("--conf", str(conf), "--http3-peer-port", str(free_ports(1)[0]), "--http3-processes", "1",
                    http3=True)
    write_conf(conf, **{**good, "http3_cert": f'"{tmp_path / "missing-cert.pem"}"'})
    result = app.ctl("reload")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert re.search(r"reload failed: http3(-\d+)? could not start with the new config", result.stderr), result.stderr
    app.wait_for(lambda s: s["state"] == "ready" and all(p["state"] == "ready" for p in s["processes"])
                 and any(p["role"] == "http3" for p in s["processes"]), "HTTP/3 back with the previous config")
    # the worker that had taken the new config is replaced by one of the previous config
    poll(lambda: "reload rolled back: every worker runs the previous config" in app.log(), 30, "the rollback")
    assert app.status()["state"] == "ready" and app.status()["last_reload"]["ok"] is False
    assert app.status()["config"]["values"]["http3_cert"] == ""
    assert app.proc.poll() is None and child_starts(app) < 10


def test_metrics_endpoint_bounds_2000_idle_connections(appliance):
    from appliance.supervisor import METRICS_TIMEOUT

    app = appliance("--workers", "1")
    supervisor = app.proc.pid
    threads_before = len(os.listdir(f"/proc/{supervisor}/task"))
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", app.ports["metrics"]), timeout=10))
        threads = len(os.listdir(f"/proc/{supervisor}/task"))
        assert threads <= threads_before + 1, (threads_before, threads)
        assert "reflector_" in _scrape(app)  # the idle crowd does not lock a scrape out
        for _ in range(20):  # clients that hang up mid-reply (RST): no traceback anywhere
            rude = socket.create_connection(("127.0.0.1", app.ports["metrics"]), timeout=10)
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            rude.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            rude.close()
        _wait_all_closed(idle, METRICS_TIMEOUT * 3)
        assert len(os.listdir(f"/proc/{supervisor}/task")) <= threads_before + 1
        assert "reflector_" in _scrape(app)
    finally:
        for sock in idle:
            sock.close()
    log = app.log()
    assert "Traceback" not in log and "BrokenPipe" not in log and "ConnectionReset" not in log


def _scrape(app: Appliance) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", app.ports["metrics"], timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def _wait_all_closed(socks: list[socket.socket], timeout: float) -> None:
    """Wait until the server has closed every one of these connections (EOF or reset)."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_ = len(socks)
    deadline = time.monotonic() + timeout
    while open_:
        assert time.monotonic() < deadline, f"{open_} of {len(socks)} idle connections still open"
        for key, _ in selector.select(1.0):
            try:
                data = key.fileobj.recv(1)
            except OSError:
                data = b""
            assert data == b"", "an idle connection got data"
            selector.unregister(key.fileobj)
            open_ -= 1
    selector.close()


def test_no_planted_secret_in_status_logs_or_500_bodies(appliance, tmp_path):
    dead_s3 = free_ports(1)[0]  # nothing listens there: every origin fetch fails
    planted = {
        "aws_id": "AKIAPL4NTEDID", "aws_secret": "pl4ntedAwsSecretKey", "bucket_name": "pl4nted-bucket",
        "s3_endpoint": f"http://s3user:pl4ntedEndpointPw@127.0.0.1:{dead_s3}",
        "slack_hook_url": "http://127.0.0.1:9/services/T000/B000/pl4ntedHook",
        "localdb_conn": "cache:pl4ntedLocaldbPw@tcp(127.0.0.1:9)/cache", "use_db": "false",
        "db_conn": "reflector:pl4ntedDbPw@tcp(127.0.0.1:9)/reflector",
        "upstream_edge_token": "pl4ntedEdgeToken", "workers": "1",
        "origin_endpoint_fallback": "http://edge:pl4ntedFallbackPw@127.0.0.1:9/blobs/",
    }
    conf = write_conf(tmp_path / "appliance.toml", **{k: v if v == "false" or v.isdigit() else json.dumps(v)
                                                      for k, v in planted.items()})
    app = appliance("--conf", str(conf), "-v", "all")
    bodies = []
    for _ in range(3):
        status, body = http_status(app, "ab" * 48)
        assert status == 500
        bodies.append(body)
    assert set(bodies) == {b"internal server error"}
    status = app.ctl("status", "--json")
    assert status.returncode == 0
    app.signal(signal.SIGHUP)  # a reload logs too
    app.wait_for(lambda s: s.get("last_reload"), "the reload")
    assert app.stop() == 0
    log = app.log()
    assert "store error" in log  # the details went to the log...
    secrets = ["pl4ntedAwsSecretKey", "pl4ntedEndpointPw", "pl4ntedHook", "pl4ntedLocaldbPw", "pl4ntedDbPw",
               "pl4ntedEdgeToken", "pl4ntedFallbackPw", "AKIAPL4NTEDID"]
    for where, text in (("status", status.stdout), ("log", log), ("500 bodies", b"".join(bodies).decode())):
        hits = [s for s in secrets if s in text]
        assert hits == [], f"{where} shows {hits}"


def test_an_outside_sigkill_is_reported_as_such(appliance):
    app = appliance("--workers", "1")
    victim = app.pids("worker")[0]
    os.kill(victim, signal.SIGKILL)
    poll(lambda: "respawning" in app.log(), 20, "the respawn")
    line = next(line for line in app.log().splitlines() if "respawning" in line)
    assert f"pid {victim}) exited unexpectedly (killed by SIGKILL)" in line, line
    assert "out of memory" not in line and "heartbeat" not in line


def test_a_stalled_worker_is_reported_as_killed_by_the_supervisor(appliance):
    app = appliance("--workers", "1", "--heartbeat-timeout", "1.5")
    victim = app.pids("worker")[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        poll(lambda: "respawning" in app.log(), 30, "the respawn")
    finally:
        if pid_alive(victim):
            os.kill(victim, signal.SIGCONT)
    line = next(line for line in app.log().splitlines() if "respawning" in line)
    assert "killed by SIGKILL by the supervisor (its heartbeat stalled" in line, line


def test_appliancectl_tells_permission_denied_from_not_running(appliance, tmp_path):
    app = appliance("--workers", "1")
    code, err = _as_nobody(["--runtime-dir", str(app.runtime_dir), "status"])
    assert code == 1 and "permission denied on" in err and "control.sock" in err, err
    assert "not running" not in err
    app.stop()
    result = app.ctl("status")
    assert result.returncode == 1 and "no appliance is running" in result.stderr


def _as_nobody(argv: list[str]) -> tuple[int, str]:
    """appliancectl's exit code and stderr, run in a forked child that dropped to the `nobody` user."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sys.stderr = os.fdopen(write, "w")  # pytest's capture replaced sys.stderr in this process
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            from appliance.cli import appliancectl

            code = appliancectl.main(argv)
        except BaseException as exc:  # noqa: BLE001 - the parent sees it in stderr
            print(f"child failed: {exc!r}", file=sys.stderr)
            code = 99
        sys.stderr.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err
