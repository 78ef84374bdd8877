"""The .deb: it builds, its files and maintainer scripts are right, and it installs, runs and purges cleanly.

Installing needs a root file system that is not this machine's. We use a copy-on-write clone of this Debian 12
machine: an overlay whose lower layer is / and whose upper layer is a tmp dir, mounted in a private mount
namespace; commands run chrooted into it. dpkg and apt see a real Debian 12 with its real package database
(so Depends are resolved for real), the maintainer scripts run chrooted as they would on a server, and every
change lands in the upper layer, where the purge test looks for anything left behind. Nothing reaches the
real / and nothing of it is shared between tests.
"""
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import __version__, configfile

REPO = Path(__file__).resolve().parent.parent
NAME = "reflector-appliance"
VENV = f"/opt/{NAME}/venv"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="building and installing a .deb needs root (mount namespaces)"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system"),
]


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(["scripts/build-deb.sh"], cwd=REPO, env={**os.environ, "DIST_DIR": str(out)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    path = out / f"{NAME}_{__version__}_{arch}.deb"
    assert result.stdout.strip().endswith(path.name) and path.is_file()
    assert [p.name for p in out.iterdir()] == [path.name], "a partial package was left in the output directory"
    return path


@pytest.fixture(scope="module")
def unpacked(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True, timeout=120)
    return root


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_control_fields(deb):
    assert field(deb, "Package") == NAME and field(deb, "Version") == __version__
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    assert "python3 (>= 3.11)" in depends and "python3 (<< 3.12)" in depends
    assert any(d.startswith("libc6 (>= ") for d in depends), depends  # from dpkg-shlibdeps on the wheels
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True).stdout
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert f" {script} " in info


def test_files_and_maintainer_scripts(deb, unpacked):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    names = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for path in (f"{VENV}/bin/prism", f"{VENV}/bin/appliancectl", f"/lib/systemd/system/{NAME}.service",
                 f"/etc/{NAME}/config.toml", f"/etc/{NAME}/secrets.toml", "/usr/bin/prism", "/usr/bin/appliancectl",
                 f"/usr/share/doc/{NAME}/examples/config.json", f"/usr/share/{NAME}/haproxy/haproxy.cfg",
                 f"/usr/share/{NAME}/prometheus/alerts.yml", f"/usr/share/{NAME}/prometheus/alerts_test.yml",
                 f"/usr/share/{NAME}/grafana/reflector-appliance.json"):
        assert path in names, path
    assert all(line.split()[1] == "root/root" for line in listing.splitlines())
    assert (unpacked / "DEBIAN" / "conffiles").read_text().split() == [f"/etc/{NAME}/config.toml",
                                                                       f"/etc/{NAME}/secrets.toml"]
    for script in ("postinst", "prerm", "postrm"):
        mode = (unpacked / "DEBIAN" / script).stat().st_mode
        assert mode & 0o777 == 0o755, script
        assert (unpacked / "DEBIAN" / script).read_bytes() == (REPO / "packaging" / script).read_bytes()
    assert stat.S_IMODE((unpacked / f"etc/{NAME}/secrets.toml").stat().st_mode) == 0o640
    assert (unpacked / f"etc/{NAME}/config.toml").read_text() == configfile.DIST_CONFIG.read_text()
    assert (unpacked / f"lib/systemd/system/{NAME}.service").read_bytes() == \
        (REPO / "systemd" / f"{NAME}.service").read_bytes()


def test_venv_was_built_at_its_final_path(unpacked):
    venv = unpacked / VENV.lstrip("/")
    assert os.readlink(venv / "bin" / "python3") == "/usr/bin/python3"
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink() and script.read_bytes().startswith(b"#!"):
            assert script.read_text().splitlines()[0] == f"#!{VENV}/bin/python3", script.name
    # No trace of the scratch directories the venv was built in (pyc paths, RECORD files, scripts), except
    # pip's note of where the appliance's own wheel came from (PEP 610 direct_url.json).
    stray = subprocess.run(["grep", "-rlF", "--exclude=direct_url.json", "reflector-venv.", str(venv)],
                           capture_output=True, text=True)
    assert stray.stdout == ""


class OverlayRoot:
    """A copy-on-write clone of / (see the module docstring); `run` executes a command chrooted into it."""

    def __init__(self, base: Path):
        self.upper, work, self.merged = base / "upper", base / "work", base / "merged"
        for d in (self.upper, work, self.merged):
            d.mkdir()
        script = (f"set -e; mount -t overlay overlay -o lowerdir=/,upperdir={self.upper},workdir={work} "
                  f"{self.merged}; mount --rbind /dev {self.merged}/dev; mount -t proc proc {self.merged}/proc; "
                  "echo ready; exec sleep 900")
        # The sleeping process holds the namespace (and so the mounts) until close() kills it.
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.holder.stdout.readline().strip() != "ready":
            self.holder.wait(timeout=10)
            raise RuntimeError(f"cannot mount the overlay root: {self.holder.stderr.read().strip()}")

    def run(self, *cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"]
        result = subprocess.run(["nsenter", f"--target={self.holder.pid}", "--mount", "chroot", str(self.merged),
                                 *env, *cmd], capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        return result

    def path(self, path: str) -> Path:
        """`path` inside the clone, seen from outside the namespace (through the holder's /proc root)."""
        return Path(f"/proc/{self.holder.pid}/root{self.merged}") / path.lstrip("/")

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait()


@pytest.fixture
def clone(tmp_path) -> Iterator[OverlayRoot]:
    root = OverlayRoot(tmp_path)
    try:
        yield root
    finally:
        root.close()
        shutil.rmtree(tmp_path / "upper", ignore_errors=True)  # the installed venv: ~100 MB


# What installing and purging any package leaves in a Debian root: the package manager's own records, the
# shadow tools' backups and lock, and systemctl's cache from our `systemctl enable` in the chroot.
BOOKKEEPING = ("var/lib/dpkg/", "var/lib/apt/", "var/cache/apt/", "var/cache/debconf/", "var/log/apt/",
               "var/log/dpkg.log", "etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/.pwd.lock",
               "run/systemd/")


def leftovers(upper: Path) -> list[str]:
    """Paths in the overlay's upper layer that differ from this machine's /, bookkeeping aside."""
    found = []
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(upper))
            if rel.startswith(BOOKKEEPING):
                continue
            lower, st = Path("/") / rel, path.lstat()
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                found.append(f"{rel} (deleted from the system)")
            elif stat.S_ISDIR(st.st_mode):
                if not lower.is_dir():
                    found.append(rel + "/")
            elif stat.S_ISLNK(st.st_mode):
                if not lower.is_symlink() or os.readlink(lower) != os.readlink(path):
                    found.append(rel)
            elif not lower.is_file() or lower.read_bytes() != path.read_bytes():
                found.append(rel)
    return sorted(found)


def passwd_entry(clone: OverlayRoot, name: str) -> list[str] | None:
    for line in clone.path("/etc/passwd").read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    return None


def test_installs_runs_and_purges_cleanly(deb, clone):
    assert clone.run("dpkg-query", "-W", NAME, check=False).returncode != 0, f"{NAME} is installed on this machine"
    assert not clone.path(f"/opt/{NAME}").exists() and passwd_entry(clone, "reflector") is None

    # apt resolves the Depends against this Debian 12's real package database.
    clone.run("apt-get", "install", "-y", "--no-install-recommends", str(deb))
    user = passwd_entry(clone, "reflector")
    assert user is not None and int(user[2]) < 1000 and user[5:] == [f"/var/lib/{NAME}", "/usr/sbin/nologin"]
    uid, gid = int(user[2]), int(user[3])
    for d in (f"/var/lib/{NAME}", f"/var/lib/{NAME}/blobs", f"/var/lib/{NAME}/state", f"/var/cache/{NAME}",
              f"/var/log/{NAME}"):
        st = clone.path(d).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750), d
    st = clone.path(f"/etc/{NAME}/secrets.toml").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o640)

    # The installed code runs, as root and as the service user, at the paths the unit uses.
    installed = clone.run(f"{VENV}/bin/prism", "version").stdout
    assert f"Version: {__version__}" in installed
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # built from a checkout: the package knows its commit without git at run time
        assert f"commit: {head.stdout.strip()}" in installed
    as_service = clone.run("setpriv", "--reuid=reflector", "--regid=reflector", "--init-groups", "/usr/bin/prism",
                           "version")
    assert as_service.stdout.splitlines()[:2] == ["Name: prism-bin", f"Version: {__version__}"]
    check = clone.run(f"{VENV}/bin/python", "-m", "appliance.configfile", "--check", configfile.SERVICE_CONFIG)
    assert check.stdout.strip() == f"{configfile.SERVICE_CONFIG}: OK"
    # The installed unit verifies with its real ExecStart in place.
    verify = clone.run("systemd-analyze", "verify", "--man=no", f"/lib/systemd/system/{NAME}.service")
    assert (verify.stdout, verify.stderr) == ("", "")

    # Reinstalling (dpkg's upgrade path) keeps the operator's edits to the conffiles.
    with clone.path(configfile.SERVICE_CONFIG).open("a") as f:
        f.write("workers = 3\n")
    clone.run("dpkg", "-i", str(deb))
    assert clone.path(configfile.SERVICE_CONFIG).read_text().endswith("workers = 3\n")
    assert passwd_entry(clone, "reflector")[2] == str(uid)

    clone.run("systemctl", "enable", f"{NAME}.service")  # offline: only the symlink, as on a real server
    assert clone.path(f"/etc/systemd/system/multi-user.target.wants/{NAME}.service").is_symlink()
    clone.path(f"/var/lib/{NAME}/blobs/ab").mkdir()  # data the service would have written
    clone.path(f"/var/lib/{NAME}/blobs/ab/blob").write_bytes(b"x")

    clone.run("apt-get", "purge", "-y", NAME)
    assert clone.run("dpkg-query", "-W", NAME, check=False).returncode != 0
    assert passwd_entry(clone, "reflector") is None
    assert "reflector:" not in clone.path("/etc/group").read_text()
    assert leftovers(clone.upper) == []


# --- acceptance: the installed appliance, started exactly the way its unit starts it ---------------------

def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (REPO / "systemd" / f"{NAME}.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifySocket:
    """A fake systemd notify socket (abstract namespace, as sd_notify allows): collects what the service says."""

    def __init__(self):
        self.name = f"@reflector-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[str] = []

    def wait_for(self, field: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> list[str]:
        """Messages received until one holds `field` (e.g. READY=1); fails if the service exits first."""
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            self.sock.settimeout(0.2)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                assert proc.poll() is None, f"the service exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                continue
            self.messages.append(message)
            seen.append(message)
            if field in message.splitlines():
                return seen
        raise AssertionError(f"no {field} within {timeout} s; got {seen}; log:\n{log.read_text()[-3000:]}")

    def close(self) -> None:
        self.sock.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def workers_in_metrics(port: int) -> float:
    match = re.search(r'^appliance_processes\{role="worker"\} (\S+)$', scrape(port), re.M)
    return float(match.group(1)) if match else -1.0


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def test_service_starts_reloads_and_stops_as_the_unit_runs_it(deb, clone, tmp_path):
    unit = unit_directives()
    clone.run("apt-get", "install", "-y", "--no-install-recommends", str(deb))
    ports = {key: free_port() for key in ("receiver_port", "tcp_peer_port", "http_peer_port", "metrics_port")}
    # Loopback only and nothing that reaches the internet: a DHT node without seeds, no blocklist, no
    # protected-content list. (HTTP/3 is off until its role exists.)
    settings = {**ports, "listen_address": "127.0.0.1", "workers": 1, "dht_port": free_port(socket.SOCK_DGRAM),
                "dht_seeds": [], "disable_http3": True, "disable_blocklist": True, "protected_content_url": ""}
    config = clone.path(configfile.SERVICE_CONFIG)
    text = config.read_text()
    for key, value in settings.items():  # replace the line the shipped config sets, else add one
        line = f"{key} = {configfile.toml_value(value)}"
        text, found = re.subn(rf"^{key} = .*$", line.replace("\\", "\\\\"), text, flags=re.M)
        text += "" if found else line + "\n"
    config.write_text(text)

    # What systemd does before ExecStart: the RuntimeDirectory= directories, owned by the user, with their mode.
    user = passwd_entry(clone, "reflector")
    uid, gid = int(user[2]), int(user[3])
    for name in unit["RuntimeDirectory"][0].split():
        clone.path("/run/" + name).mkdir()
        os.chown(clone.path("/run/" + name), uid, gid)
        os.chmod(clone.path("/run/" + name), int(unit["RuntimeDirectoryMode"][0], 8))
    runtime = clone.path("/run/" + unit["RuntimeDirectory"][0].split()[0])

    notify = NotifySocket()
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
           f"HOME={user[5]}", "USER=reflector", "LOGNAME=reflector", f"SHELL={user[6]}",
           f"INVOCATION_ID={uuid.uuid4().hex}", f"NOTIFY_SOCKET={notify.name}",
           f"WATCHDOG_USEC={int(unit['WatchdogSec'][0]) * 1_000_000}", *unit["Environment"]]
    sandbox = ["setpriv", f"--reuid={unit['User'][0]}", f"--regid={unit['Group'][0]}", "--init-groups",
               "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    umask = ["sh", "-c", f'umask {unit["UMask"][0]}; exec "$@"', "sh"]
    # MemoryDenyWriteExecute=yes, through the kernel's PR_SET_MDWE (Linux >= 6.3; inherited by every child).
    assert unit["MemoryDenyWriteExecute"] == ["yes"]
    mdwe = ["/usr/bin/python3", "-c", "import ctypes, os, sys; r = ctypes.CDLL(None).prctl(65, 1, 0, 0, 0); "
            "print('PR_SET_MDWE:', r, file=sys.stderr, flush=True); os.execv(sys.argv[1], sys.argv[1:])"]
    log = tmp_path / "service.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["nsenter", f"--target={clone.holder.pid}", "--mount", "chroot", str(clone.merged),
                                 *sandbox, "env", "-i", *env, *umask, *mdwe, *unit["ExecStart"][0].split()],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        started = notify.wait_for("READY=1", proc, log)
        assert any(line.startswith("STATUS=") for m in started for line in m.splitlines())
        assert workers_in_metrics(ports["metrics_port"]) == 1
        assert (runtime / "control.sock").exists() and (runtime / "prom").is_dir()
        if ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) >= 0:  # PR_GET_MDWE: this kernel has MDWE
            assert log.read_text().startswith("PR_SET_MDWE: 0\n")  # so all of the above ran without W+X memory

        # appliancectl with no arguments finds the service through the installed config.
        status = clone.run("/usr/bin/appliancectl", "status").stdout
        assert f"pid {proc.pid}" in status and "ready" in status and "worker-0" in status, status
        assert re.search(r"^cache-manager\s+\d+", status, re.M), status

        # It serves: a blob uploaded to the receiver is stored under StateDirectory= and served over HTTP.
        sent = clone.run("/usr/bin/prism", "--conf", "none", "sendblob", f"127.0.0.1:{ports['receiver_port']}")
        blob = json.loads(sent.stdout)["blob_hash"]
        url = f"http://127.0.0.1:{ports['http_peer_port']}/blob?hash={blob}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert hashlib.sha384(response.read()).hexdigest() == blob
        [stored] = clone.path(configfile.SERVICE_PROFILE["storage_dir"]).rglob(blob)
        assert stored.stat().st_uid == uid and stored.stat().st_mode & 0o007 == 0  # UMask=0027

        # ExecReload: HUP after an edit -> RELOADING=1 ... READY=1, and the new worker count is applied.
        config.write_text(config.read_text().replace("workers = 1\n", "workers = 2\n"))
        os.kill(proc.pid, signal.SIGHUP)
        reload = notify.wait_for("RELOADING=1", proc, log) + notify.wait_for("READY=1", proc, log)
        assert reload
        wait_until(lambda: workers_in_metrics(ports["metrics_port"]) == 2, 60, "a second worker after HUP")

        def roles() -> list[str]:  # the replaced worker may still be listed while it retires
            status = json.loads(clone.run("/usr/bin/appliancectl", "status", "--json").stdout)
            return sorted(p["role"] for p in status["processes"]) if status["state"] == "ready" else []

        wait_until(lambda: roles() == ["cache-manager", "dht", "worker", "worker"], 60,
                   "appliancectl showing 2 workers")

        # KillSignal=SIGTERM: STOPPING=1, every child gone, exit 0 well within TimeoutStopSec.
        children = children_of(proc.pid)
        assert len(children) >= 4, children  # cache manager, DHT and two workers
        os.kill(proc.pid, signal.SIGTERM)
        notify.wait_for("STOPPING=1", proc, log)
        assert proc.wait(timeout=float(unit["TimeoutStopSec"][0])) == 0, log.read_text()[-3000:]
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
        assert not (runtime / "control.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()

    # ProtectSystem=strict: everything the service wrote is in the directories the unit makes writable.
    writable = [f"{d}/{NAME}" for d in ("run", "var/lib", "var/cache", "var/log")] + ["tmp", "var/tmp"]
    written = [str(p.relative_to(clone.upper)) for p in clone.upper.rglob("*") if p.lstat().st_uid == uid]
    assert [p for p in written if not any(p == w or p.startswith(w + "/") for w in writable)] == []
