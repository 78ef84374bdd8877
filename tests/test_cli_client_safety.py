"""`prism getstream` never replaces a file unless --overwrite; clients that reach the wrong kind of server
say so (and what to do); errors never show internal temp names; counts read right ("1 blob")."""
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appliance.cli.common import plural
from tests.minimal_server import MinimalServer
from tests.server_process import ServerProcess
from tests.test_cli_client_commands import assert_one_line_error, prism, put_stream

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    with MinimalServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def appliance_servers(tmp_path_factory):
    """The appliance's own upload, TCP peer and HTTP servers (a subprocess over a disk store)."""
    store = tmp_path_factory.mktemp("store")
    with ServerProcess("--store", f"disk:{store}", "--receiver-port", "0", "--peer-port", "0",
                       "--http-port", "0") as srv:
        yield srv


def no_temp_files(directory: Path) -> bool:
    return not [p.name for p in directory.iterdir() if p.name.endswith(".part")]


def test_getstream_refuses_to_replace_an_existing_file(server, tmp_path):
    desc = put_stream(server, os.urandom(300_000), stream_name="notes.txt")
    target = tmp_path / "notes.txt"
    target.write_bytes(b"precious")
    address = f"127.0.0.1:{server.ports['peer']}"
    # The default destination (the suggested name in the cwd), and -o naming the file: both refused.
    for args in ((), ("-o", str(target))):
        result = prism("getstream", address, desc.sd_hash, *args, cwd=tmp_path)
        assert_one_line_error(result, 1, f"{target} already exists")
        assert "--overwrite" in result.stderr and result.stdout == ""
        assert target.read_bytes() == b"precious"
        assert no_temp_files(tmp_path)
    # Nothing was downloaded for a refused file.
    assert server.peer_requests == 2  # the sd blob, once per run: no content blob was asked for


def test_getstream_with_overwrite_replaces_the_file(server, tmp_path):
    plain = os.urandom(300_000)
    desc = put_stream(server, plain, stream_name="notes.txt")
    target = tmp_path / "notes.txt"
    target.write_bytes(b"old")
    result = prism("getstream", f"127.0.0.1:{server.ports['peer']}", desc.sd_hash, "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == plain
    assert result.stdout.strip() == str(target)
    assert no_temp_files(tmp_path)


def test_printed_path_is_absolute_with_or_without_o(server, tmp_path):
    plain = os.urandom(1000)
    desc = put_stream(server, plain, stream_name="a.bin")
    address = f"127.0.0.1:{server.ports['peer']}"
    default = prism("getstream", address, desc.sd_hash, cwd=tmp_path)
    relative = prism("getstream", address, desc.sd_hash, "-o", "b.bin", cwd=tmp_path)
    assert default.returncode == relative.returncode == 0, (default.stderr, relative.stderr)
    assert default.stdout.strip() == str(tmp_path / "a.bin")
    assert relative.stdout.strip() == str(tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == plain


def test_missing_output_directory_is_named_without_temp_names(server, tmp_path):
    desc = put_stream(server, os.urandom(1000), stream_name="x.txt")
    target = tmp_path / "nonexistent" / "dir" / "x.txt"
    result = prism("getstream", f"127.0.0.1:{server.ports['peer']}", desc.sd_hash, "-o", str(target))
    assert_one_line_error(result, 1, f"cannot write {target}: directory {target.parent} does not exist")
    assert ".part" not in result.stderr


def test_getstream_against_the_http_port_suggests_http(appliance_servers, tmp_path):
    sd_hash = "ab" * 48
    result = prism("getstream", f"127.0.0.1:{appliance_servers.ports['http']}", sd_hash, cwd=tmp_path)
    assert_one_line_error(result, 1, "answered in HTTP, not the TCP peer protocol")
    assert "it sent 'HTTP/1." in result.stderr and "add --http" in result.stderr
    assert "Invalid data" not in result.stderr


def test_send_to_an_http_server_says_it_is_not_a_reflector(appliance_servers, tmp_path):
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(5000))
    result = prism("send", f"127.0.0.1:{appliance_servers.ports['http']}", str(source))
    assert_one_line_error(result, 1, "answered in HTTP, not the reflector upload protocol")
    assert "it sent 'HTTP/1." in result.stderr
    assert "invalid json" not in result.stderr


def banner_server(banner: bytes):
    """A TCP server that greets every connection with `banner` (an SSH server, say) and reads nothing."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(banner)
            threading.Timer(5, conn.close).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def test_send_to_something_else_quotes_its_first_bytes(tmp_path):
    listener = banner_server(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    try:
        port = listener.getsockname()[1]
        result = prism("sendblob", f"127.0.0.1:{port}")
        assert_one_line_error(result, 1, f"127.0.0.1:{port} does not speak the reflector upload protocol: "
                                         "it sent 'SSH-2.0-OpenSSH_9.2p1 Debian-2\\r\\n'")
        result = prism("getstream", f"127.0.0.1:{port}", "ab" * 48, cwd=tmp_path)
        assert_one_line_error(result, 1, "does not speak the TCP peer protocol: it sent 'SSH-2.0-")
        assert "--http" not in result.stderr  # not an HTTP server: no HTTP advice
    finally:
        listener.close()


def test_counts_are_pluralised(server, tmp_path):
    assert [plural(n, "blob") for n in (0, 1, 2)] == ["0 blobs", "1 blob", "2 blobs"]
    assert plural(1, "blob was", "blobs were") == "1 blob was"
    source = tmp_path / "one.bin"
    source.write_bytes(os.urandom(1000))  # one content blob
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "appliance.cli.prism", "-v", "all", "send",
                             f"127.0.0.1:{server.ports['receiver']}", str(source)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "1 blob sent" in result.stderr and "1 blobs" not in result.stderr


def test_getstream_http_against_a_peer_port_says_it_is_not_http(appliance_servers, tmp_path):
    result = prism("getstream", "--http", f"127.0.0.1:{appliance_servers.ports['peer']}", "ab" * 48, cwd=tmp_path)
    assert_one_line_error(result, 1, "did not answer in HTTP")
    assert "leave out --http" in result.stderr and "cannot connect" not in result.stderr


def test_send_to_a_peer_port_quotes_its_answer(appliance_servers, tmp_path):
    result = prism("sendblob", f"127.0.0.1:{appliance_servers.ports['peer']}")
    assert_one_line_error(result, 1, "does not speak the reflector upload protocol: it sent '{\"")


@pytest.mark.parametrize("argv,usage", [
    (["getstream", "127.0.0.1:1", "ab" * 48, "--bogus"], "usage: prism getstream"),
    (["reflector", "--worker", "4"], "usage: prism reflector"),  # no prefix matching: --worker is not --workers
    (["send", "--sd-cach", "x", "127.0.0.1:1", "f"], "usage: prism send"),
    (["dht", "lookup", "ab" * 48, "--bogus"], "usage: prism dht lookup"),
])
def test_a_bad_flag_gets_the_subcommands_own_usage(argv, usage):
    result = prism(*argv, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.startswith(usage), result.stderr
    assert "unrecognized arguments" in result.stderr


def test_appliancectl_refuses_abbreviations_with_the_verbs_usage():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "appliance.cli.appliancectl", "--runtime=/x", "status"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments: --runtime=/x" in result.stderr
    result = subprocess.run([sys.executable, "-m", "appliance.cli.appliancectl", "status", "--js"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("usage: appliancectl status")
