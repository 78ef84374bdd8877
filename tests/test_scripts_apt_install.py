"""scripts/lib.sh `apt_install`: what the README's two commands install must not run or listen on the machine.

apt-get, dpkg and systemctl are replaced by recording stand-ins on PATH (the real ones would change this
machine); the function itself, its policy-rc.d and its unit discovery run for real.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STUBS = {
    # dpkg -s: nothing is installed; dpkg -L: the files of a package with a daemon
    "dpkg": """#!/bin/sh
case "$1" in
  -s) exit 1 ;;
  -L) echo /usr/share/doc/$2; echo /lib/systemd/system/$2.service; echo /lib/systemd/system/$2@.service;
      echo /usr/lib/systemd/system/$2-exporter.socket ;;
esac
""",
    # apt-get: records its arguments and what the package's maintainer scripts would get from policy-rc.d
    "apt-get": """#!/bin/sh
echo "apt-get $*" >> "$LOG"
if [ "$1" = install ] || [ "$2" = install ] || echo "$*" | grep -q ' install '; then
  if [ -x "$APT_POLICY_RC_D" ]; then "$APT_POLICY_RC_D" nginx start; echo "policy-rc.d says $?" >> "$LOG"
  else echo "no policy-rc.d" >> "$LOG"; fi
  exit "${APT_STATUS:-0}"
fi
""",
    "systemctl": """#!/bin/sh
echo "systemctl $*" >> "$LOG"
""",
    "sudo": """#!/bin/sh
exec "$@"
""",
}


def run_apt_install(tmp_path: Path, *, systemd: bool = True, status: int = 0, policy: str | None = None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    log.write_text("")
    policy_path = tmp_path / "policy-rc.d"
    if policy is not None:
        policy_path.write_text(policy)
        policy_path.chmod(0o755)
    systemd_dir = tmp_path / "run-systemd"
    if systemd:
        systemd_dir.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
           "APT_POLICY_RC_D": str(policy_path), "SYSTEMD_RUN_DIR": str(systemd_dir), "APT_STATUS": str(status)}
    proc = subprocess.run(["bash", "-c", "set -euo pipefail; source scripts/lib.sh; apt_install nginx"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    return proc, log.read_text().splitlines(), policy_path


def test_packages_come_without_recommends_and_their_daemons_neither_start_nor_stay_enabled(tmp_path):
    proc, log, policy = run_apt_install(tmp_path)
    assert proc.returncode == 0, proc.stderr
    install = next(line for line in log if " install " in line)
    assert "--no-install-recommends" in install and install.endswith(" nginx")
    assert "policy-rc.d says 101" in log  # invoke-rc.d refuses to start anything during the install
    assert not policy.exists()  # and the placed policy-rc.d is gone afterwards
    disable = [line for line in log if line.startswith("systemctl ")]
    assert disable == ["systemctl disable --now --quiet nginx-exporter.socket nginx.service"]
    assert "stopped and disabled" in proc.stderr


def test_an_existing_policy_rc_d_is_left_alone_and_no_systemctl_without_systemd(tmp_path):
    own = "#!/bin/sh\nexit 101\n# the operator's own\n"
    proc, log, policy = run_apt_install(tmp_path, systemd=False, policy=own)
    assert proc.returncode == 0, proc.stderr
    assert policy.read_text() == own
    assert not any(line.startswith("systemctl") for line in log)


def test_a_failed_install_fails_the_script_and_still_removes_its_policy_rc_d(tmp_path):
    proc, log, policy = run_apt_install(tmp_path, status=100)
    assert proc.returncode == 100
    assert "policy-rc.d says 101" in log and not policy.exists()
    assert not any(line.startswith("systemctl") for line in log)
