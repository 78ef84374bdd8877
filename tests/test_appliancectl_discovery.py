"""`appliancectl` finds the appliance from any directory: --runtime-dir, --conf, $REFLECTOR_RUNTIME_DIR, then
the first of the installed service's, this checkout's quick start's and ./run that holds a control socket.
(The quick start itself, found from /, is checked in tests/test_quick_start.py.)"""
import argparse
import json
import socket
import subprocess
import sys

import pytest

from appliance.cli import appliancectl
from tests.appliance_process import appliance_fixture, child_env  # noqa: F401


def ctl(*args: str, cwd: str = "/", **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in child_env().items() if k != "REFLECTOR_RUNTIME_DIR"} | env
    return subprocess.run([sys.executable, "-m", "appliance.cli.appliancectl", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=60)


def test_status_from_root_through_the_environment_variable(appliance):
    app = appliance("--workers", "1")
    result = ctl("status", "--json", REFLECTOR_RUNTIME_DIR=str(app.runtime_dir))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pid"] == app.proc.pid
    # --runtime-dir wins over the environment variable.
    result = ctl("--runtime-dir", str(app.runtime_dir), "status", "--json", REFLECTOR_RUNTIME_DIR="/nonexistent")
    assert result.returncode == 0, result.stderr


def namespace(runtime_dir=None, conf=None) -> argparse.Namespace:
    return argparse.Namespace(runtime_dir=runtime_dir, conf=conf)


def fake_socket(directory) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(directory / "control.sock"))
    sock.close()


def test_search_order(tmp_path, monkeypatch):
    service, quick, cwd = tmp_path / "service", tmp_path / "checkout" / "run", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(appliancectl, "_implicit_runtime_dirs", lambda: [str(service), str(quick), str(cwd / "run")])
    env = {"REFLECTOR_RUNTIME_DIR": str(tmp_path / "from-env")}
    conf = tmp_path / "c.toml"
    conf.write_text(f'runtime_dir = "{tmp_path / "from-conf"}"\n')
    assert appliancectl.control_socket(namespace("x"), env) == str(cwd / "x" / "control.sock")
    assert appliancectl.control_socket(namespace(conf=str(conf)), env) == str(tmp_path / "from-conf" / "control.sock")
    assert appliancectl.control_socket(namespace(), env) == str(tmp_path / "from-env" / "control.sock")
    with pytest.raises(appliancectl.NotFound, match="--runtime-dir DIR or \\$REFLECTOR_RUNTIME_DIR") as err:
        appliancectl.control_socket(namespace(), {})
    assert str(service) in str(err.value) and str(quick) in str(err.value)
    for directory in (cwd / "run", quick, service):  # each one found, then shadowed by the one before it
        fake_socket(directory)
        assert appliancectl.control_socket(namespace(), {}) == str(directory / "control.sock")


def test_implicit_places_include_this_checkouts_quick_start():
    from appliance import configfile

    assert str(configfile.REPO_ROOT / "run") in appliancectl._implicit_runtime_dirs()


def test_help_documents_the_search_order():
    out = ctl("--help").stdout
    assert "--runtime-dir" in out and "$REFLECTOR_RUNTIME_DIR" in out and "/etc/reflector-appliance/config.toml" in out
    assert "quick start" in out and "./run" in out


def test_not_found_is_one_line_exit_1(checkout_run_dir, tmp_path):  # never while the quick start test runs
    result = ctl("status", cwd=str(tmp_path))
    if result.returncode == 0:
        pytest.fail("an appliance answered in an implicit place; this test needs none running")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "no appliance is running" in result.stderr
