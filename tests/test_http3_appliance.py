"""The http3 role inside real appliances: chained over --upstream-protocol http3, served to an independent
HTTP/3 client, supervised (heartbeat, graceful stop), applying the blocklist and protected content, and refusing
to boot with an unusable certificate."""
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest
import requests
from test_http3_support import Appliance, H3Probe, wait_for

from appliance.blob import blob_hash
from appliance.clients.reflector import ReflectorClient
from appliance.stores.disk import DiskStore
from appliance.stream import decrypt_stream, make_stream
from appliance.trace import Trace
from tests.servers.http import Route


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _http_get(appliance: Appliance, hash_: str) -> bytes:
    resp = requests.get(f"http://127.0.0.1:{appliance.ports['http']}/blob", params={"hash": hash_}, timeout=30)
    assert resp.status_code == 200, (resp.status_code, resp.text, appliance.output()[-2000:])
    return resp.content


def test_chained_appliance_serves_a_stream_from_its_http3_upstream(tmp_path):
    source = tmp_path / "video.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024 + 1234))  # three content blobs
    made_dir = tmp_path / "made"
    made_dir.mkdir()
    descriptor = make_stream(str(source), out_dir=str(made_dir)).descriptor
    content = [b.blob_hash for b in descriptor.content_blobs]
    (tmp_path / "up").mkdir()
    (tmp_path / "down").mkdir()
    up = Appliance(tmp_path / "up")
    with up:
        with ReflectorClient("127.0.0.1", up.ports["receiver"], timeout=30) as client:
            client.send_stream(descriptor.sd_hash, descriptor.raw, lambda h: (made_dir / h).read_bytes())
        down = Appliance(tmp_path / "down", "--upstream-reflector", f"127.0.0.1:{up.ports['http3']}",
                         "--upstream-protocol", "http3", "--disable-uploads")
        fetched = {}
        with down:
            # A gevent worker fetches through Http3Store (HTTP/1.1 to the downstream) ...
            fetched[descriptor.sd_hash] = _http_get(down, descriptor.sd_hash)
            fetched[content[0]] = _http_get(down, content[0])
            # ... and so does the downstream's own asyncio HTTP/3 role (from its pool threads).
            with H3Probe(down.ports["http3"]) as probe:
                assert probe.request(f"/has/{content[1]}")[0] == 200  # answered by the upstream
                status, headers, body = probe.request(f"/get/{content[1]}?trace=true")
                assert status == 200
                fetched[content[1]] = body
                hops = [hop.origin_name for hop in Trace.from_json(headers[b"via"]).stacks]
                assert hops[:2] == ["disk", "http3"]  # the upstream's disk, then the HTTP/3 hop
                assert probe.request(f"/get/{blob_hash(b'nowhere')}")[0] == 404
            # The upstream restarts; the downstream's connection to it is replaced on the next miss.
            assert up.stop() == 0
            up.start()
            fetched[content[2]] = _http_get(down, content[2])
            for h, data in fetched.items():
                assert data == (made_dir / h).read_bytes()
            out = io.BytesIO()
            decrypt_stream(descriptor, lambda info: fetched[info.blob_hash], out)
            assert out.getvalue() == source.read_bytes()
            # Each blob crossed HTTP/3 exactly once (worker and http3 role both count into the same metric).
            assert _metric(down.metrics(), "reflector_udp_in_bytes") == sum(len(d) for d in fetched.values())
            # Served again from the downstream's disk cache: no new upstream request.
            served_before = _metric(up.metrics(), "reflector_http3_blob_download_total")
            assert _http_get(down, content[2]) == fetched[content[2]]
            assert _metric(up.metrics(), "reflector_http3_blob_download_total") == served_before
        assert down.stop() == 0
    assert served_before == 1  # the restarted upstream (fresh counters) served content[2] over HTTP/3


def test_http3_role_serves_reports_and_stops_gracefully(tmp_path):
    store = DiskStore(str(tmp_path / "blobs"))
    payloads = [os.urandom(2 * 1024 * 1024), os.urandom(10)]
    for payload in payloads:
        store.put(blob_hash(payload), payload)
    app = Appliance(tmp_path, "--request-queue-size", "4", "--http3-processes", "1")
    with app:
        with H3Probe(app.ports["http3"]) as probe:
            for payload in payloads:
                assert probe.request(f"/get/{blob_hash(payload)}")[::2] == (200, payload)
            assert probe.request(f"/has/{blob_hash(payloads[0])}")[0] == 200
            assert probe.request(f"/has/{blob_hash(b'missing')}")[0] == 404
            assert probe.request(f"/get/{blob_hash(b'missing')}")[::2] == (404, b"blob not found\n")
            assert probe.request("/get/nothex")[0] == 400

        def http3_process():
            return next(p for p in app.status()["processes"] if p["role"] == "http3")

        wait_for(lambda: http3_process()["requests"] >= 6, 10, "the http3 heartbeat to report the requests")
        text = app.metrics()
        assert _metric(text, "reflector_http3_blob_download_total") == 2
        assert _metric(text, "reflector_udp_out_bytes") == sum(len(p) for p in payloads)
        key = tmp_path / "state" / "http3" / "key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        cert = (tmp_path / "state" / "http3" / "cert.pem").read_bytes()
        pid = http3_process()["pid"]
        assert app.stop() == 0
    assert f"http3-0[{pid}] http3: stopped" in app.output()
    with app:  # a restart reuses the certificate made at first start
        assert (tmp_path / "state" / "http3" / "cert.pem").read_bytes() == cert
        with H3Probe(app.ports["http3"]) as probe:
            assert probe.request(f"/get/{blob_hash(payloads[1])}")[::2] == (200, payloads[1])


def test_each_http3_process_is_listed_and_a_killed_one_is_respawned_on_its_slot(tmp_path):
    store = DiskStore(str(tmp_path / "blobs"))
    payload = os.urandom(300_000)
    store.put(blob_hash(payload), payload)
    with Appliance(tmp_path, "--http3-processes", "2") as app:
        def http3_processes():
            return sorted((p for p in app.status()["processes"] if p["role"] == "http3"), key=lambda p: p["slot"])

        def ready_pair():
            ready = [p for p in http3_processes() if p["state"] == "ready"]
            return ready if len(ready) == 2 else None

        first = wait_for(ready_pair, 20, "two ready HTTP/3 processes")
        assert [p["slot"] for p in first] == [0, 1] and len({p["pid"] for p in first}) == 2
        shown = subprocess.run([sys.executable, "-m", "appliance.cli.appliancectl", "--runtime-dir", str(app.runtime),
                                "status"], capture_output=True, text=True, timeout=30).stdout
        for p in first:  # appliancectl status lists each HTTP/3 process
            assert any(line.split()[:2] == [f"http3-{p['slot']}", str(p["pid"])] for line in shown.splitlines())
        # Clients on many source ports spread over both processes (SO_REUSEPORT hashes the 4-tuple): with 12,
        # all on one process has a chance of 1 in 2,048.
        for _ in range(12):
            with H3Probe(app.ports["http3"]) as probe:
                assert probe.request(f"/get/{blob_hash(payload)}")[::2] == (200, payload)
        wait_for(lambda: all(p["requests"] > 0 for p in http3_processes()), 10,
                 "requests reported by both HTTP/3 processes")
        os.kill(first[0]["pid"], signal.SIGKILL)

        def respawned():
            now = ready_pair()
            return now if now and first[0]["pid"] not in {p["pid"] for p in now} else None

        after = wait_for(respawned, 30, "the killed HTTP/3 process to be replaced")
        assert [p["pid"] for p in after][1] == first[1]["pid"]  # same slots; the other one kept running
        for _ in range(12):  # every client port is served again, whichever process it hashes to
            with H3Probe(app.ports["http3"]) as probe:
                assert probe.request(f"/get/{blob_hash(payload)}")[::2] == (200, payload)
        assert "exited unexpectedly (killed by SIGKILL)" in app.output()


def test_blocklisted_streams_are_not_served_over_http3(tmp_path):
    source = tmp_path / "blocked.bin"
    source.write_bytes(os.urandom(3000))
    made = tmp_path / "made"
    made.mkdir()
    descriptor = make_stream(str(source), out_dir=str(made)).descriptor
    storage = DiskStore(str(tmp_path / "blobs"))
    for path in made.iterdir():
        storage.put(path.name, path.read_bytes())
    other = os.urandom(100)
    storage.put(blob_hash(other), other)
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text(descriptor.sd_hash + "\n")
    content = descriptor.content_blobs[0].blob_hash
    with Appliance(tmp_path, blocklist=blocklist) as app, H3Probe(app.ports["http3"]) as probe:
        wait_for(lambda: probe.request(f"/has/{content}")[0] == 404, 10, "the block to reach the http3 role")
        assert probe.request(f"/get/{descriptor.sd_hash}")[::2] == (404, b"blob not found\n")
        assert probe.request(f"/get/{content}")[0] == 404
        assert probe.request(f"/get/{blob_hash(other)}")[::2] == (200, other)


def test_protected_blobs_need_the_edge_token_over_http3(tmp_path, http_server):
    storage = DiskStore(str(tmp_path / "blobs"))
    secret, public = os.urandom(300), os.urandom(300)
    for payload in (secret, public):
        storage.put(blob_hash(payload), payload)
    listing = {"success": True, "error": "", "data": [{"sd_hash": blob_hash(secret), "claim_id": "ab" * 20}]}
    http_server.routes["/list"] = Route(200, json.dumps(listing).encode())
    with Appliance(tmp_path, "--protected-content-url", http_server.url("/list"), "--upstream-edge-token", "tok") \
            as app, H3Probe(app.ports["http3"]) as probe:
        assert probe.request(f"/get/{blob_hash(secret)}")[::2] == (403, b"requested blob is protected\n")
        assert probe.request(f"/get/{blob_hash(secret)}?edge_token=nope")[0] == 403
        assert probe.request(f"/get/{blob_hash(secret)}?edge_token=tok")[::2] == (200, secret)
        assert probe.request(f"/get/{blob_hash(public)}")[::2] == (200, public)


@pytest.mark.parametrize("flags,needle", [
    (["--http3-cert", "/nonexistent/cert.pem"], "http3_cert /nonexistent/cert.pem: No such file or directory"),
    (["--http3-key", "/nonexistent/key.pem"], "http3_key is set but http3_cert is not"),
])
def test_an_unusable_certificate_stops_the_appliance_with_one_line(tmp_path, flags, needle):
    app = Appliance(tmp_path, *flags).start(wait=False)
    try:
        code = app.proc.wait(30)
    except subprocess.TimeoutExpired:
        app.stop(signal.SIGKILL)
        raise
    assert code != 0
    lines = [line for line in app.output().splitlines() if needle in line]
    # One line from each HTTP/3 process that got as far as its certificate before the supervisor stopped them
    # all: with several processes (one per core by default) that may be more than one, never two from one.
    senders = [line.split("[", 1)[0] for line in lines]
    assert lines and all("cannot start" in line for line in lines), app.output()
    assert all(s.startswith("http3-") for s in senders) and len(senders) == len(set(senders)), app.output()


def test_disable_http3_leaves_the_role_and_the_port_out(tmp_path):
    app = Appliance(tmp_path, "--disable-http3")
    with app:
        assert [p for p in app.status()["processes"] if p["role"] == "http3"] == []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", app.ports["http3"]))  # nobody holds the UDP port
