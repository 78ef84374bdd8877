"""`prism cluster start|join` as real subprocesses over a real MariaDB: members print their place as it
changes on join, clean leave (SIGTERM/SIGINT) and crash (SIGKILL); one-line errors and exit codes."""
from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.appliance_process import child_env, free_ports

PRISM = [sys.executable, "-m", "appliance.cli.prism"]
HEARTBEAT = "0.3"


class Member:
    """A `prism cluster` process whose stdout lines are read as they come."""

    def __init__(self, conf: str, action: str, name: str, *extra: str):
        self.proc = subprocess.Popen([*PRISM, "cluster", action, "--conf", conf, "--node-name", name,
                                      "--cluster-heartbeat", HEARTBEAT, *extra], env=child_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 15) -> str:
        """The next stdout line matching `pattern` (earlier lines are skipped); fails after `timeout`."""
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got {seen}; {stderr}") from None
            seen.append(line)
            if re.fullmatch(pattern, line):
                return line

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(15)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)


@pytest.fixture
def members():
    started: list[Member] = []
    yield started
    for member in started:
        member.kill()


def write_conf(directory: Path, **values) -> str:
    path = directory / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


def run_prism(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*PRISM, *args], env=child_env(), capture_output=True, text=True, timeout=timeout)


def test_members_print_their_place_on_join_leave_and_crash(tmp_path, mysql_db, members):
    conf = write_conf(tmp_path, db_conn=mysql_db.dsn)
    a = Member(conf, "start", "node-a")
    members.append(a)
    a.expect("joined cluster prism as node-a")
    a.expect("1 of 1: node-a")
    b, c = Member(conf, "join", "node-b"), Member(conf, "join", "node-c", "--cluster-port", "17999")
    members += [b, c]
    for index, member in enumerate((a, b, c), 1):
        member.expect(f"{index} of 3: node-a node-b node-c")
    b.kill()  # SIGKILL: no goodbye, the others notice the silent heartbeat
    a.expect("1 of 2: node-a node-c")
    c.expect("2 of 2: node-a node-c")
    assert c.stop(signal.SIGTERM) == 0  # a clean leave deletes its row
    c.expect("left cluster prism")
    a.expect("1 of 1: node-a")
    assert mysql_db.query("SELECT name FROM cluster_member ORDER BY name") == [("node-a",), ("node-b",)]
    assert a.stop(signal.SIGINT) == 0
    assert mysql_db.query("SELECT name FROM cluster_member") == [("node-b",)]


def test_a_name_held_by_a_live_member_is_refused(tmp_path, mysql_db, members):
    conf = write_conf(tmp_path, db_conn=mysql_db.dsn)
    first = Member(conf, "start", "twin")
    members.append(first)
    first.expect("1 of 1: twin")
    second = run_prism("cluster", "join", "--conf", conf, "--node-name", "twin", "--cluster-heartbeat", HEARTBEAT)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1].startswith(
        "prism: node name twin is used by a live member of cluster prism")


def test_cluster_errors_are_one_line(tmp_path):
    no_db = run_prism("cluster", "start", "--conf", "none")
    assert (no_db.returncode, no_db.stderr.strip().splitlines()[-1]) == (1, "prism: db required in conf")
    dead = write_conf(tmp_path, db_conn=f"u:secret@tcp(127.0.0.1:{free_ports(1)[0]})/x")
    unreachable = run_prism("cluster", "start", "--conf", dead)
    assert unreachable.returncode == 1
    last = unreachable.stderr.strip().splitlines()[-1]
    assert last.startswith("prism: database u:***@tcp(127.0.0.1:") and "secret" not in unreachable.stderr
    bad_name = run_prism("cluster", "start", "--conf", dead, "--node-name", "no spaces")
    assert bad_name.returncode == 2
    assert bad_name.stderr.strip().splitlines()[-1].startswith("prism: invalid node name 'no spaces'")
    bad_action = run_prism("cluster", "leave", "--conf", dead)
    assert bad_action.returncode == 2
