"""scripts/install.sh into a tmp root: user, directories, venv, config and unit; idempotent; an edited config is
kept; --uninstall keeps data and config; --purge leaves the root as it was. Run from a snapshot of the checkout so
that other work in the checkout cannot change the sources between two runs."""
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from appliance import __version__

REPO = Path(__file__).resolve().parent.parent
NAME = "reflector-appliance"
SHADOW_BACKUPS = {"etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-"}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh needs root (useradd, chown, mounts)")


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of what install.sh uses from the checkout."""
    copy = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("scripts", "packaging", "config", "systemd", "appliance", "workers", "deploy"):
        shutil.copytree(REPO / part, copy / part, ignore=ignore)
    for part in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / part, copy / part)
    return copy


@pytest.fixture
def root(tmp_path) -> Path:
    """A root file system with nothing but the user and group databases."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\n")
    return root


def install(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(checkout / "scripts/install.sh"), *args], capture_output=True, text=True, timeout=600)


def snapshot(root: Path, skip: set[str] = frozenset()) -> dict[str, tuple]:
    """Every path under root with its type, mode, owner, mtime and content (hash) or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel in skip:
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, content)
    return out


def entry(root: Path, db: str, name: str) -> list[str] | None:
    for line in (root / "etc" / db).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    return None


@needs_root
def test_install_reinstall_edit_uninstall_purge(checkout, root):
    baseline = snapshot(root)
    first = install(checkout, "--root", str(root))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "systemctl enable --now reflector-appliance" in first.stdout and "appliancectl status" in first.stdout
    assert "systemd is not running" in first.stderr  # no daemon-reload attempted here

    user, group = entry(root, "passwd", "reflector"), entry(root, "group", "reflector")
    assert user and group and int(user[2]) < 1000 and user[3] == group[2]
    assert user[5:] == [f"/var/lib/{NAME}", "/usr/sbin/nologin"]
    uid, gid = int(user[2]), int(group[2])
    for d in (f"var/lib/{NAME}/blobs", f"var/lib/{NAME}/state", f"var/cache/{NAME}", f"var/log/{NAME}"):
        st = (root / d).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750), d
    st = (root / f"etc/{NAME}/secrets.toml").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o640)
    assert (root / f"etc/{NAME}/config.toml").read_text() == (checkout / "config/reflector-appliance.toml").read_text()
    assert (root / f"etc/systemd/system/{NAME}.service").read_text() == \
        (checkout / f"systemd/{NAME}.service").read_text()
    assert os.readlink(root / "usr/local/bin/appliancectl") == f"/opt/{NAME}/venv/bin/appliancectl"
    for shipped in ("haproxy/haproxy.cfg", "prometheus/alerts.yml", "grafana/reflector-appliance.json"):
        assert (root / f"usr/share/{NAME}" / shipped).read_bytes() == (checkout / "deploy" / shipped).read_bytes()
    venv = root / f"opt/{NAME}/venv"
    assert (venv / "bin/prism").read_text().startswith(f"#!/opt/{NAME}/venv/bin/python3\n")
    # The venv's interpreter runs the installed code (cwd=/ so that no checkout is on sys.path).
    version = subprocess.run([str(venv / "bin/python"), "-m", "appliance.cli.prism", "version"], cwd="/",
                             capture_output=True, text=True, timeout=60)
    assert f"Version: {__version__}" in version.stdout, version.stderr
    where = subprocess.run([str(venv / "bin/python"), "-c", "import appliance; print(appliance.__file__)"], cwd="/",
                           capture_output=True, text=True, timeout=60).stdout
    assert where.startswith(str(venv) + "/")

    # Idempotent: a second run changes nothing at all.
    installed = snapshot(root)
    second = install(checkout, "--root", str(root))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "is up to date" in second.stdout and "installed /" not in second.stdout
    assert snapshot(root) == installed

    # An edited config is kept; the new default goes beside it, once.
    config = root / f"etc/{NAME}/config.toml"
    config.write_text(config.read_text() + "workers = 3\n")
    third = install(checkout, "--root", str(root))
    assert third.returncode == 0 and "kept your edited" in third.stdout
    assert config.read_text().endswith("workers = 3\n")
    assert (root / f"etc/{NAME}/config.toml.dist-new").read_text() == \
        (checkout / "config/reflector-appliance.toml").read_text()
    edited = snapshot(root)
    assert install(checkout, "--root", str(root)).returncode == 0
    assert snapshot(root) == edited

    # --uninstall: code, unit, commands and user go; data and config stay.
    (root / f"var/lib/{NAME}/blobs/ab").mkdir()
    (root / f"var/lib/{NAME}/blobs/ab/blob").write_bytes(b"data")
    removed = install(checkout, "--root", str(root), "--uninstall")
    assert removed.returncode == 0, removed.stderr[-3000:]
    for gone in (f"opt/{NAME}", f"etc/systemd/system/{NAME}.service", "usr/local/bin/prism",
                 "usr/local/bin/appliancectl", f"usr/share/{NAME}"):
        assert not os.path.lexists(root / gone), gone
    assert entry(root, "passwd", "reflector") is None and entry(root, "group", "reflector") is None
    assert (root / f"var/lib/{NAME}/blobs/ab/blob").read_bytes() == b"data"
    assert config.read_text().endswith("workers = 3\n") and (root / f"etc/{NAME}/secrets.toml").exists()

    # --purge: the same files as before the install (the shadow tools' backups aside), no directory of ours.
    purged = install(checkout, "--root", str(root), "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr[-3000:]
    after = {k: v for k, v in snapshot(root, SHADOW_BACKUPS).items() if not (root / k).is_dir()}
    before = {k: v for k, v in baseline.items() if not (root / k).is_dir()}
    assert {k: v[4] for k, v in after.items()} == {k: v[4] for k, v in before.items()}
    assert [str(p) for p in root.rglob("*reflector*")] == []


@pytest.mark.parametrize("args,message", [
    (["--purge"], "--purge goes with --uninstall"),
    (["--bogus"], "unknown argument '--bogus'"),
    (["--root", "/nonexistent/dir"], "no such directory"),
])
def test_bad_usage_is_one_line_and_exit_2(args, message):
    result = subprocess.run([str(REPO / "scripts/install.sh"), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr


def test_help_describes_the_options():
    result = subprocess.run([str(REPO / "scripts/install.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--uninstall" in result.stdout and "--purge" in result.stdout
