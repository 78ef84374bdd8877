"""A running appliance announces what it stores: an uploaded stream's sd hash is found in the DHT at our
address and TCP peer port, and the blob downloads from there."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from appliance.clients.peer import PeerClient
from appliance.clients.reflector import ReflectorClient
from appliance.stream import make_stream
from tests.appliance_process import REPO, appliance_fixture, child_env, free_ports, poll  # noqa: F401


def test_uploaded_sd_blob_is_announced_and_downloadable(appliance, tmp_path):
    dht_port = free_ports(1)[0]
    app = appliance("--dht-port", str(dht_port), "--workers", "1", dht=True)
    source = tmp_path / "video.bin"
    source.write_bytes(os.urandom(300_000))
    blobs_dir = tmp_path / "blobs"
    blobs_dir.mkdir()
    made = make_stream(str(source), out_dir=str(blobs_dir))
    sd = made.descriptor
    client = ReflectorClient("127.0.0.1", app.ports["receiver"], timeout=10)
    client.send_stream(sd.sd_hash, sd.raw, lambda h: (blobs_dir / h).read_bytes())

    def lookup() -> list[str]:
        out = subprocess.run([sys.executable, "-m", "appliance.cli.prism", "dht", "lookup", sd.sd_hash, "--seeds",
                              f"127.0.0.1:{dht_port}", "--timeout", "2"], capture_output=True, text=True,
                             timeout=60, cwd=REPO, env=child_env())
        return out.stdout.split() if out.returncode == 0 else []

    peers = poll(lookup, 30, "the appliance to announce the sd hash", interval=0.5)
    assert f"127.0.0.1:{app.ports['tcp_peer']}" in peers
    host, port = peers[0].rsplit(":", 1)
    peer = PeerClient(host, int(port), timeout=10)
    assert peer.get_blob(sd.sd_hash) == sd.raw
    peer.close()
    app.wait_for(lambda status: status["dht"].get("held", 0) >= 1, "appliancectl status to show the held hash")


def test_an_unknown_hash_is_not_found(appliance):
    dht_port = free_ports(1)[0]
    appliance("--dht-port", str(dht_port), "--workers", "1", dht=True)
    out = subprocess.run([sys.executable, "-m", "appliance.cli.prism", "dht", "lookup", "ab" * 48, "--seeds",
                          f"127.0.0.1:{dht_port}", "--timeout", "2"], capture_output=True, text=True, timeout=60,
                         cwd=REPO, env=child_env())
    assert out.returncode == 1 and out.stdout == ""


def test_the_dht_process_limits_a_flooding_source_and_counts_it(appliance):
    """issue 15: 2,000 requests from one source within a second get at most the configured rate answered,
    another source is still answered, and the metrics say so."""
    import time

    from appliance.dht.messages import (
        FIND_NODE,
        PING,
        PONG,
        Request,
        Response,
        decode_message,
        encode_message,
        request_args,
    )

    dht_port = free_ports(1)[0]
    rate, burst = 50, 50
    app = appliance("--dht-port", str(dht_port), "--workers", "1", "--dht-rate-limit", str(rate),
                    "--dht-rate-burst", str(burst), "--dht-max-amplification", "4", dht=True)
    flooder, other = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    flooder.bind(("127.0.0.2", 0))
    other.bind(("127.0.0.3", 0))
    target = ("127.0.0.1", dht_port)

    def responses(sock, quiet):
        got = []
        sock.settimeout(quiet)
        try:
            while True:
                message = decode_message(sock.recv(2048))
                if isinstance(message, Response):  # (an unknown sender is also pinged back once)
                    got.append(message)
        except TimeoutError:
            return got

    sender = os.urandom(48)
    requests = [encode_message(Request(os.urandom(20), sender, FIND_NODE, request_args(FIND_NODE, os.urandom(48))))
                for _ in range(2000)]
    start = time.monotonic()
    for i in range(0, 2000, 100):
        for data in requests[i:i + 100]:
            flooder.sendto(data, target)
        time.sleep(0.04)
    ping = Request(os.urandom(20), os.urandom(48), PING, request_args(PING))
    other.sendto(encode_message(ping), target)
    pongs = responses(other, 2.0)
    answers = responses(flooder, 0.5)
    elapsed = time.monotonic() - start
    assert [(p.rpc_id, p.result) for p in pongs] == [(ping.rpc_id, PONG)]
    assert burst <= len(answers) <= burst + rate * elapsed + 1
    poll(lambda: app.metrics().get('appliance_dht_requests_dropped_total{reason="rate"}', 0) >= 1500, 10,
         "the DHT process to count the dropped requests")
    assert app.status()["dht"]["port"] == dht_port
    flooder.close()
    other.close()
