import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

from server_process import recv_exactly, recv_json

from appliance.blob import blob_hash
from appliance.protocol import peer as peer_codec
from appliance.protocol import reflector as codec
from appliance.stores.disk import DiskStore

PRISM = [sys.executable, "-m", "appliance.cli.prism"]


def _start(args, pattern, tmp_path):
    """Run `prism ARGS` and wait for its readiness log line; returns (proc, match)."""
    proc = subprocess.Popen(PRISM + args + ["--conf", "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    deadline, seen = time.monotonic() + 20, ""
    while time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 0.2)[0]:
            line = proc.stderr.readline()
            seen += line
            match = re.search(pattern, line)
            if match:
                return proc, match
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"prism did not start: {seen}{proc.communicate()[1]}")


def _download(port, h):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(peer_codec.encode_request(h))
        header, rest = recv_json(sock)
        length = peer_codec.accept_blob(peer_codec.parse_response(header), h)
        return rest + recv_exactly(sock, length - len(rest))


def test_prism_test_receives_serves_and_lists_its_blobs_on_exit(tmp_path):
    proc, m = _start(["test", "--receiver-port", "0", "--tcp-peer-port", "0", "--listen-address", "127.0.0.1"],
                     r"receiver on 127\.0\.0\.1:(\d+), tcp peer on 127\.0\.0\.1:(\d+)", tmp_path)
    receiver, peer = int(m.group(1)), int(m.group(2))
    data = os.urandom(3000)
    h = blob_hash(data)
    try:
        with socket.create_connection(("127.0.0.1", receiver), timeout=10) as sock:
            sock.sendall(codec.encode_handshake(0))
            assert recv_json(sock)[0] == {"version": 0}
            sock.sendall(codec.encode_blob_request(h, len(data)))
            assert recv_json(sock)[0] == {"send_blob": True}
            sock.sendall(data)
            assert recv_json(sock)[0] == {"received_blob": True}
        assert _download(peer, h) == data
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["Blobs in store", f"{h}: 3000 bytes"]


def test_prism_peer_serves_local_storage(tmp_path):
    store = DiskStore(str(tmp_path / "blobs"))
    data = os.urandom(5000)
    store.put(blob_hash(data), data)
    proc, m = _start(["peer", "--port", "0", "--listen-address", "127.0.0.1", "--storage-dir", store.root,
                      "--nodb=true"], r"tcp peer server ready on 127\.0\.0\.1:(\d+)", tmp_path)
    try:
        assert _download(int(m.group(1)), blob_hash(data)) == data
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        out = subprocess.run(PRISM + ["peer", "--port", str(port), "--listen-address", "127.0.0.1",
                                      "--storage-dir", str(tmp_path), "--conf", "none"],
                             capture_output=True, text=True, timeout=20, cwd=tmp_path)
    finally:
        taken.close()
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == f"prism: cannot listen on 127.0.0.1:{port}: Address already in use"
