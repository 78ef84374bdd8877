"""scripts/run (the README's quick start) in a network namespace with only loopback: it starts, serves a
stream, logs no warning (no outside host it fails to reach), every listener is on 127.0.0.1, and
`appliancectl status` run from / finds it."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.appliance_process import REPO, poll

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"),
                                reason="needs root and util-linux unshare/nsenter for a network namespace")


class Namespace:
    """A network namespace with only loopback up, held open by a sleeping process; run() enters it."""

    def __init__(self):
        self.holder = subprocess.Popen(["unshare", "-n", "--", "sleep", "600"])
        poll(lambda: os.readlink(f"/proc/{self.holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"), 10,
             "the network namespace")
        self.run("ip", "link", "set", "lo", "up", check=True)

    def command(self, *args: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-n", "--", *args]

    def run(self, *args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", 120)
        return subprocess.run(self.command(*args), capture_output=True, text=True, check=check, **kwargs)

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def netns():
    ns = Namespace()
    try:
        yield ns
    finally:
        ns.close()


def listeners(ns: Namespace) -> list[str]:
    """Local address:port of every TCP listener and UDP socket in the namespace."""
    out = ns.run("ss", "-Hlntu", check=True).stdout
    return [line.split()[4] for line in out.splitlines() if line.strip()]


def test_quick_start_stays_on_loopback_and_contacts_no_outside_host(checkout_run_dir, netns, tmp_path):
    run_dir = REPO / "run"  # the quick start's own runtime directory, where appliancectl looks for it
    assert not (run_dir / "control.sock").exists(), f"a quick start is already running from {REPO}"
    log_path = tmp_path / "run.log"
    prism = str(REPO / ".venv" / "bin" / "prism")
    with open(log_path, "w") as log:
        # scripts/run as the README runs it; only the data directories go to tmp_path.
        app = subprocess.Popen(netns.command(str(REPO / "scripts" / "run"), "--workers", "1",
                                             "--storage-dir", str(tmp_path / "blobs"),
                                             "--state-dir", str(tmp_path / "state")),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # appliancectl finds the quick start from any directory, with no flag or environment variable.
        ctl = [str(REPO / ".venv" / "bin" / "appliancectl"), "status", "--json"]
        env = {k: v for k, v in os.environ.items() if k != "REFLECTOR_RUNTIME_DIR"}

        def ready():
            assert app.poll() is None, log_path.read_text()
            result = netns.run(*ctl, cwd="/", env=env)
            return result.returncode == 0 and "all roles ready" in log_path.read_text() and json.loads(result.stdout)

        status = poll(ready, 60, "the quick start to be ready", interval=0.3)
        assert netns.run(*ctl[:-1], cwd="/", env=env).stdout.startswith("reflector appliance ")
        assert {p["role"] for p in status["processes"]} == {"worker", "cache-manager", "dht", "http3"}

        # Every listener, TCP and UDP, on 127.0.0.1, and all the expected ones are there.
        bound = listeners(netns)
        assert bound and all(address.startswith("127.0.0.1:") for address in bound), bound
        for port in ("5566", "5567", "5569", "2112", "5568", "4444"):
            assert f"127.0.0.1:{port}" in bound, (port, bound)

        # It serves a stream: reflect a file, get it back over the TCP peer protocol.
        source = tmp_path / "clip.bin"
        source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        sent = netns.run(prism, "send", "127.0.0.1:5566", str(source))
        assert sent.returncode == 0, sent.stderr
        sd_hash = json.loads(sent.stdout)["sd_hash"]
        out = tmp_path / "back.bin"
        got = netns.run(prism, "getstream", "127.0.0.1:5567", sd_hash, "-o", str(out))
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == source.read_bytes()
    finally:
        os.killpg(app.pid, signal.SIGTERM)
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()

    text = log_path.read_text()
    records = [line for line in text.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]
    # Its first lines say where it listens and that it contacts no outside host, naming what opens it up.
    assert "listening on 127.0.0.1 only" in records[0] and "--listen-address 0.0.0.0" in records[0], records[:2]
    assert "contacting no outside host" in records[1], records[:2]
    for opener in ("--dht-seeds", "--disable-blocklist=false", "--protected-content-url"):
        assert opener in records[1]
    # No warning or error: nothing tried to reach a host it cannot reach in a loopback-only namespace.
    bad = [line for line in records if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]
    assert not bad, bad
    assert not re.search(r"lbry\.com|odysee\.com", text), text


def test_run_script_uses_the_quick_start_config():
    from appliance import configfile

    assert f"--conf {configfile.DIST_QUICK_START.relative_to(REPO)}" in (REPO / "scripts" / "run").read_text()
    result = subprocess.run([sys.executable, "-m", "appliance.configfile", "--check",
                             str(configfile.DIST_QUICK_START)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
