"""The hardened systemd unit: systemd-analyze verify is silent, the exposure score is <= 2.0, the directives
match the appliance's paths and settings, and the stack really runs without W+X memory."""
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance import config as cfg
from appliance import configfile

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "reflector-appliance.service"
PRISM = "/opt/reflector-appliance/venv/bin/prism"

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive, in order (keys may repeat, as systemd allows)."""
    section, out = "", []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.append((section, key.strip(), value.strip()))
    return out


def service(key: str) -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == "Service" and k == key]


def templated_unit(tmp_path: Path, text: str | None = None) -> Path:
    """A copy of the unit whose ExecStart is a stub executable in tmp_path (verify needs it to exist)."""
    stub = tmp_path / "prism"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text((text or UNIT.read_text()).replace(PRISM, str(stub)))
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=60)


@needs_systemd_analyze
def test_verify_prints_nothing(tmp_path):
    result = analyze("verify", "--man=no", str(templated_unit(tmp_path)))
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@needs_systemd_analyze
def test_verify_would_catch_a_bad_directive(tmp_path):
    # The check above is only worth something if a parse error shows on stderr (rc stays 0 for those).
    broken = UNIT.read_text().replace("Type=notify", "Type=notifyy")
    result = analyze("verify", "--man=no", str(templated_unit(tmp_path, broken)))
    assert "notifyy" in result.stderr


@needs_systemd_analyze
def test_exposure_score_at_most_2(tmp_path):
    result = analyze("security", "--offline=true", str(templated_unit(tmp_path)))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_runs_the_installed_command_with_the_service_paths():
    assert service("ExecStart") == [f"{PRISM} reflector --conf {configfile.SERVICE_CONFIG}"]
    assert service("Type") == ["notify"] and service("NotifyAccess") == ["main"]
    assert service("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert service("KillMode") == ["mixed"] and service("KillSignal") == ["SIGTERM"]
    assert service("User") == service("Group") == ["reflector"]
    assert int(service("WatchdogSec")[0]) > 0 and service("Restart") == ["on-failure"]
    # systemd's managed directories are the service profile's directories.
    profile = configfile.SERVICE_PROFILE
    runtime_dirs = service("RuntimeDirectory")[0].split()
    assert "/run/" + runtime_dirs[0] == profile["runtime_dir"]
    assert "/var/cache/" + service("CacheDirectory")[0] == profile["cache_dir"]
    state = "/var/lib/" + service("StateDirectory")[0]
    assert profile["storage_dir"].startswith(state + "/") and profile["state_dir"].startswith(state + "/")
    # The metrics directory exists (systemd makes it) before prism imports prometheus_client.
    assert service("Environment") == [f"PROMETHEUS_MULTIPROC_DIR={profile['runtime_dir']}/prom"]
    assert "/run/" + runtime_dirs[1] == f"{profile['runtime_dir']}/prom"


def test_stop_timeout_exceeds_the_graceful_timeout():
    assert float(service("TimeoutStopSec")[0]) > cfg.BY_KEY["graceful_timeout"].default + 5


def test_hardening_directives_are_present():
    expected = {
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "ProtectHome": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "", "UMask": "0027", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expected.items():
        assert service(key) == [value], key
    assert "@system-service" in service("SystemCallFilter")


def test_every_directive_block_is_justified_by_a_comment():
    # Blocks are separated by blank lines; each block of directives starts with a comment saying why.
    for block in re.split(r"\n\s*\n", UNIT.read_text()):
        lines = [line for line in block.strip().splitlines() if not line.startswith(("[", "Description="))]
        if any(line and not line.startswith("#") for line in lines):
            assert lines[0].startswith("#"), f"no comment for:\n{block}"


# Exercises gevent, msgpack, boto3, cryptography and an aioquic (QUIC + TLS 1.3, pyOpenSSL verification)
# handshake in a process where the kernel refuses W+X memory, as MemoryDenyWriteExecute=yes does.
STACK_UNDER_MDWE = textwrap.dedent('''
    import ctypes, datetime, mmap
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise SystemExit(f"PR_SET_MDWE failed: errno {ctypes.get_errno()}")
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        raise SystemExit("W+X memory was allowed: MDWE is not in force")
    except PermissionError:
        pass
    from gevent import monkey
    monkey.patch_all()
    import socket
    import boto3, gevent.server, msgpack, pymysql
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import HandshakeCompleted
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    server = gevent.server.StreamServer(("127.0.0.1", 0), lambda s, a: s.sendall(s.recv(16)))
    server.start()
    with socket.create_connection(("127.0.0.1", server.server_port)) as conn:
        conn.sendall(b"gevent")
        assert conn.recv(16) == b"gevent"
    server.stop()
    assert msgpack.unpackb(msgpack.packb({"a": [1, 2]})) == {"a": [1, 2]}
    boto3.session.Session().client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                                   aws_access_key_id="x", aws_secret_access_key="y")

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    client_config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
    client_config.cadata = cert.public_bytes(serialization.Encoding.PEM)
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["h3"], certificate=cert, private_key=key)
    client = QuicConnection(configuration=client_config)
    quic_server = QuicConnection(configuration=server_config,
                                 original_destination_connection_id=client.original_destination_connection_id)
    addr, t = ("127.0.0.1", 4433), 1.0
    client.connect(addr, now=t)
    done = set()
    for _ in range(20):
        for sender, receiver in ((client, quic_server), (quic_server, client)):
            for data, _ in sender.datagrams_to_send(now=t):
                receiver.receive_datagram(data, addr, now=t)
        for who, conn in (("client", client), ("server", quic_server)):
            while (event := conn.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    done.add(who)
        if done == {"client", "server"}:
            break
        t += 0.01
    assert done == {"client", "server"}, done
    print("stack OK under MDWE")
''')

CFFI_CALLBACK_UNDER_MDWE = textwrap.dedent('''
    import ctypes, cffi
    assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0
    cffi.FFI().callback("int(int)", lambda x: x)
''')


def test_stack_runs_without_write_execute_memory():
    result = subprocess.run([sys.executable, "-c", STACK_UNDER_MDWE], capture_output=True, text=True, timeout=120)
    if "PR_SET_MDWE failed" in result.stdout + result.stderr:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0 and "stack OK under MDWE" in result.stdout, result.stderr[-3000:]
    # Control: what MemoryDenyWriteExecute breaks (an ABI-mode cffi callback) does break under this check.
    control = subprocess.run([sys.executable, "-c", CFFI_CALLBACK_UNDER_MDWE], capture_output=True, text=True,
                             timeout=60)
    assert control.returncode != 0 and "write+execute" in control.stderr
