"""`prism reflector` end to end: status, a stream round trip on all three ports, /metrics, appliancectl verbs,
worker-count signals, and the ways it refuses to start (port in use, a child that cannot boot)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from tests.appliance_process import (
    Appliance,
    appliance_fixture,  # noqa: F401  (the `appliance` fixture)
    child_env,
    pid_alive,
    poll,
)


def prism(*args: str, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.prism", *args], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_embedded_defaults_status_round_trip_and_metrics(appliance, tmp_path):
    app = appliance()  # embedded defaults: only the ports (and the cwd, for ./run and ./data) differ
    status = app.status()
    roles = sorted(p["role"] for p in status["processes"])
    assert roles == ["cache-manager"] + ["worker"] * (os.cpu_count() or 1)
    for process in status["processes"]:
        assert pid_alive(process["pid"]) and process["state"] == "ready"
        assert process["started"] <= time.time() and process["last_heartbeat"] is not None

    text = app.ctl("status")
    assert text.returncode == 0, text.stderr
    for process in status["processes"]:
        assert str(process["pid"]) in text.stdout
    assert "cache-manager" in text.stdout and "worker-0" in text.stdout
    assert f"http {app.ports['http']}/tcp" in text.stdout
    as_json = app.ctl("status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    machine = json.loads(as_json.stdout)
    assert {"processes", "cache", "dht", "ports", "version", "config"} <= set(machine)
    assert {p["pid"] for p in machine["processes"]} == {p["pid"] for p in status["processes"]}
    assert all({"role", "pid", "started", "last_heartbeat"} <= set(p) for p in machine["processes"])
    assert machine["ports"]["receiver"] == app.ports["receiver"]
    assert machine["config"]["values"]["storage_dir"] == "./data/blobs"

    source = tmp_path / "clip.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024))  # 3 content blobs
    sent = prism("send", f"127.0.0.1:{app.ports['receiver']}", str(source))
    assert sent.returncode == 0, sent.stderr
    sd_hash = json.loads(sent.stdout)["sd_hash"]
    assert (app.dir / "data" / "blobs" / sd_hash[:2] / sd_hash).is_file()  # the embedded origin: local storage

    before = app.metrics()
    down = tmp_path / "down"
    down.mkdir()
    peer = prism("getstream", f"127.0.0.1:{app.ports['tcp_peer']}", sd_hash, "-o", str(down / "peer.bin"))
    assert peer.returncode == 0, peer.stderr
    http = prism("getstream", "--http", f"127.0.0.1:{app.ports['http']}", sd_hash, "-o", str(down / "http.bin"))
    assert http.returncode == 0, http.stderr
    assert (down / "peer.bin").read_bytes() == source.read_bytes() == (down / "http.bin").read_bytes()

    blobs = 4  # sd blob + 3 content blobs, per download
    after = app.metrics()

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)
    # Counted in whichever workers served them, summed by the supervisor's /metrics.
    assert grew("reflector_peer_download_total") == blobs
    assert grew("reflector_http_blob_download_total") == blobs
    assert grew("reflector_blob_download_total") == 2 * blobs
    assert app.stop() == 0


def test_appliancectl_without_an_appliance_exits_1_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "appliance.cli.appliancectl", "--runtime-dir", str(tmp_path),
                             "status"], env=child_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "no appliance is running" in one_line(result.stderr)
    assert result.stdout == ""


def test_worker_count_follows_ttin_ttou_and_appliancectl(appliance):
    app = appliance("--workers", "1")
    assert len(app.worker_pids()) == 1

    def workers(n: int):
        return lambda s: s["workers"] == n and len([p for p in s["processes"] if p["role"] == "worker"
                                                   and p["state"] == "ready"]) == n
    app.signal(signal.SIGTTIN)
    app.wait_for(workers(2), "2 workers after TTIN")
    assert app.ctl("workers", "+1").returncode == 0
    app.wait_for(workers(3), "3 workers after appliancectl workers +1")
    assert app.ctl("workers", "-1").returncode == 0
    app.wait_for(workers(2), "2 workers after appliancectl workers -1")
    app.signal(signal.SIGTTOU)
    app.wait_for(workers(1), "1 worker after TTOU")
    app.signal(signal.SIGTTOU)  # never below one worker
    time.sleep(0.5)  # nothing to poll for: the absence of a change
    assert len(app.worker_pids()) == 1 and app.status()["workers"] == 1
    assert app.stop() == 0


def test_appliancectl_reload_reopen_logs_and_stop(appliance):
    app = appliance("--workers", "2", "--log-file", "appliance-file.log")
    log_file = app.dir / "appliance-file.log"
    poll(lambda: "all roles ready" in log_file.read_text(), 10, "the supervisor's lines in --log-file")

    old = set(app.worker_pids().values())
    result = app.ctl("reload")
    assert result.returncode == 0 and result.stdout.strip() == "reload: done (2 workers running the new config)", result
    app.wait_for(lambda s: s["state"] == "ready" and set(app.worker_pids().values()).isdisjoint(old)
                 and len(app.worker_pids()) == 2, "every worker replaced by the reload")

    rotated = app.dir / "appliance-file.log.1"
    log_file.rename(rotated)
    assert app.ctl("reopen-logs").returncode == 0
    poll(lambda: log_file.exists() and "log files reopened" in log_file.read_text(), 10,
         "the supervisor to write into a new log file")
    assert "log files reopened" not in rotated.read_text()

    children = app.pids()
    result = app.ctl("stop")
    assert result.returncode == 0, result
    assert app.wait_exit(30) == 0
    assert not [pid for pid in children if pid_alive(pid)]


def test_port_in_use_is_one_line_and_no_restart_loop(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        app = Appliance(tmp_path / "a", ("--workers", "1"))
        app.argv[app.argv.index("--http-peer-port") + 1] = str(busy.getsockname()[1])
        started = time.monotonic()
        app.start(wait=False)
        try:
            code = app.wait_exit(20)
        finally:
            app.kill_all()
        assert code != 0 and time.monotonic() - started < 15
        line = one_line(app.log())
        assert line == f"prism: cannot listen on port {busy.getsockname()[1]}/tcp: address already in use"
    finally:
        busy.close()


def test_a_child_that_cannot_boot_stops_the_appliance(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    app = Appliance(tmp_path / "a", ("--workers", "1", "--disk-cache", f"1GB:{blocker}/cache:lru"))
    app.start(wait=False)
    try:
        code = app.wait_exit(30)
    finally:
        app.kill_all()
    log = app.log()
    assert code == 1, log
    assert "cannot create the disk cache directory" in log
    assert "could not start" in log
    assert log.count("started cache-manager") == 1, log  # halted on the first failure, no restart loop
    assert "Traceback" not in log


def test_an_invalid_disk_cache_value_is_refused_before_anything_starts(tmp_path):
    app = Appliance(tmp_path / "a", ("--disk-cache", "lots:somewhere"))
    app.start(wait=False)
    try:
        code = app.wait_exit(20)
    finally:
        app.kill_all()
    assert code == 2
    assert one_line(app.log()).startswith("prism: ")
    assert not (app.runtime_dir / "control.sock").exists()
