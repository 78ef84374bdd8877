"""`prism send / sendblob / getstream / check-integrity` run as real subprocesses against real servers."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.blob import blob_hash
from appliance.stream import StreamDescriptor, StreamEncoder, parse_sd_blob
from tests.minimal_server import MinimalServer
from tests.server_process import ServerProcess

REPO = Path(__file__).resolve().parents[1]


def prism(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance.cli.prism", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int = 1, contains: str = "") -> None:
    assert result.returncode == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prism: "), result.stderr
    assert contains in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.fixture
def server():
    with MinimalServer() as srv:
        yield srv


def put_stream(server: MinimalServer, plain: bytes, **names) -> StreamDescriptor:
    """Encode `plain` in memory and put its blobs on the server."""
    import io

    enc = StreamEncoder(io.BytesIO(plain), **names)
    for info, data in enc.blobs():
        server.blobs[info.blob_hash] = data
    server.blobs[enc.descriptor.sd_hash] = enc.descriptor.raw
    return enc.descriptor


@pytest.fixture(params=["minimal", "appliance"])
def any_server(request, tmp_path):
    """The minimal test server, or the appliance's own gevent servers over a disk store (a subprocess)."""
    if request.param == "minimal":
        with MinimalServer() as srv:
            yield srv
    else:
        with ServerProcess("--store", f"disk:{tmp_path / 'store'}", "--receiver-port", "0", "--peer-port", "0",
                           "--http-port", "0") as srv:
            yield srv


def test_send_and_getstream_round_trip_30_mb(any_server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = src / "movie night.mkv"
    with open(path, "wb") as f:
        for _ in range(30):
            f.write(os.urandom(1 << 20))
    sent = prism("send", f"127.0.0.1:{any_server.ports['receiver']}", str(path))
    assert sent.returncode == 0, sent.stderr
    out = json.loads(sent.stdout)
    assert list(out) == ["sd_hash", "source_hash"] and sent.stdout.startswith('{\n  "sd_hash": ')
    assert out["source_hash"] == hashlib.sha384(path.read_bytes()).hexdigest()
    if isinstance(any_server, MinimalServer):
        desc = parse_sd_blob(any_server.blobs[out["sd_hash"]])
        assert any_server.uploads == [out["sd_hash"]] + [b.blob_hash for b in desc.content_blobs]
    else:
        store = tmp_path / "store"
        desc = parse_sd_blob((store / out["sd_hash"][:2] / out["sd_hash"]).read_bytes())
        assert all((store / b.blob_hash[:2] / b.blob_hash).exists() for b in desc.content_blobs)
    assert len(desc.content_blobs) == 16 and desc.suggested_file_name == "movie night.mkv"

    down = tmp_path / "down"
    down.mkdir()
    got = prism("getstream", f"127.0.0.1:{any_server.ports['peer']}", out["sd_hash"], cwd=down)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str(down / "movie night.mkv")
    assert (down / "movie night.mkv").read_bytes() == path.read_bytes()
    if isinstance(any_server, MinimalServer):
        assert any_server.peer_connections == 1  # the whole stream over one connection
    via_http = prism("getstream", "--http", f"127.0.0.1:{any_server.ports['http']}", out["sd_hash"],
                     "-o", str(down / "copy.bin"))
    assert via_http.returncode == 0, via_http.stderr
    assert (down / "copy.bin").read_bytes() == path.read_bytes()
    assert sorted(p.name for p in down.iterdir()) == ["copy.bin", "movie night.mkv"]


def test_sd_cache_reproduces_the_identical_stream(server, tmp_path):
    path = tmp_path / "clip.bin"
    path.write_bytes(os.urandom(3_000_000))
    cache = tmp_path / "cache"
    address = f"127.0.0.1:{server.ports['receiver']}"
    first = prism("send", address, str(path), "--sd-cache", str(cache))
    assert first.returncode == 0, first.stderr
    cached = list(cache.rglob("*.sdblob"))
    assert len(cached) == 1 and cached[0].name == "clip.bin.sdblob" and cache in cached[0].parents
    uploads = list(server.uploads)
    second = prism("send", address, str(path), "--sd-cache", str(cache))
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert server.uploads == uploads  # the server already had the identical stream: nothing was sent
    # without a cache every send is a new stream (fresh key), and still exit 0 (reflector.go exits 1)
    third = prism("send", address, str(path))
    assert third.returncode == 0 and json.loads(third.stdout)["sd_hash"] != json.loads(first.stdout)["sd_hash"]


def test_sendblob(server, tmp_path):
    address = f"127.0.0.1:{server.ports['receiver']}"
    random_blob = prism("sendblob", address)
    assert random_blob.returncode == 0, random_blob.stderr
    h = json.loads(random_blob.stdout)["blob_hash"]
    assert len(server.blobs[h]) == 1024 and blob_hash(server.blobs[h]) == h
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello " * 1000)
    stream = prism("sendblob", address, str(path))
    assert stream.returncode == 0, stream.stderr
    sd_hash = json.loads(stream.stdout)["sd_hash"]
    assert server.uploads[-2:] == [sd_hash, parse_sd_blob(server.blobs[sd_hash]).blobs[0].blob_hash]


def test_bad_input_gives_one_line_errors_and_no_partial_file(server, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    peer = f"127.0.0.1:{server.ports['peer']}"
    # a corrupt sd blob (valid hash, stream hash wrong)
    sd = json.loads(put_stream(server, b"a" * 5000, stream_name="a.txt").raw)
    sd["stream_hash"] = "00" * 48
    bad_sd = json.dumps(sd, sort_keys=True).encode()
    server.blobs[blob_hash(bad_sd)] = bad_sd
    assert_one_line_error(prism("getstream", peer, blob_hash(bad_sd), cwd=out), contains="invalid sd blob")
    # a peer that sends the wrong bytes for the second content blob
    corrupt = put_stream(server, os.urandom(5_000_000), stream_name="corrupt.bin")
    server.faults[corrupt.blobs[1].blob_hash] = "corrupt"
    assert_one_line_error(prism("getstream", peer, corrupt.sd_hash, cwd=out), contains="does not match")
    assert_one_line_error(prism("getstream", "--http", f"127.0.0.1:{server.ports['http']}", corrupt.sd_hash,
                                cwd=out), contains="do not match")
    # a response cut off in the middle of the last blob
    truncated = put_stream(server, os.urandom(3_000_000), stream_name="truncated.bin")
    server.faults[truncated.blobs[1].blob_hash] = "truncate"
    assert_one_line_error(prism("getstream", peer, truncated.sd_hash, cwd=out), contains="unexpected EOF")
    # a missing sd blob, a refused connection, a bad hash
    assert_one_line_error(prism("getstream", peer, blob_hash(b"nothing"), cwd=out), contains="blob not found")
    with MinimalServer() as gone:
        port = gone.ports["peer"]
    assert_one_line_error(prism("getstream", f"127.0.0.1:{port}", corrupt.sd_hash, cwd=out),
                          contains="Connection refused")
    assert_one_line_error(prism("getstream", peer, "abc", cwd=out), code=2, contains="invalid sd hash")
    assert_one_line_error(prism("send", f"127.0.0.1:{port}", str(tmp_path / "missing")), contains="not a readable")
    assert_one_line_error(prism("send", f"127.0.0.1:{port}", __file__), contains="Connection refused")
    assert list(out.iterdir()) == []  # no output file, no temp file


def test_getstream_never_writes_outside_the_current_directory(server, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    desc = put_stream(server, b"payload" * 100, stream_name="evil", suggested_file_name="../../evil\x07.sh")
    got = prism("getstream", f"127.0.0.1:{server.ports['peer']}", desc.sd_hash, cwd=work)
    assert got.returncode == 0, got.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["work"]
    assert [p.name for p in work.iterdir()] == ["evil.sh"]
    assert (work / "evil.sh").read_bytes() == b"payload" * 100
    nameless = put_stream(server, b"x" * 10, stream_name="", suggested_file_name="")
    got = prism("getstream", f"127.0.0.1:{server.ports['peer']}", nameless.sd_hash, cwd=work)
    assert got.returncode == 0 and Path(got.stdout.strip()).name.startswith("stream_")


def make_store(root: Path, count: int) -> list[str]:
    blobs = {blob_hash(data): data for data in (i.to_bytes(4, "big") * 16 for i in range(count))}  # 64 bytes each
    for prefix in {h[:2] for h in blobs}:
        os.mkdir(root / prefix)
    for h, data in blobs.items():
        with open(os.path.join(root, h[:2], h), "wb") as f:
            f.write(data)
    return list(blobs)


def test_check_integrity_20000_blobs(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    hashes = make_store(store, 20_000)
    broken = sorted(hashes[i] for i in (7, 9_999, 19_998))
    for h in broken:
        (store / h[:2] / h).write_bytes(b"bit rot")
    (store / "tmp").mkdir()
    (store / "tmp" / hashes[0]).write_bytes(b"upload in progress")
    (store / "notes.txt").write_text("not a blob")
    (store / hashes[1][:2] / "short").write_text("not a blob either")

    dry = prism("check-integrity", "--store-path", str(store), "--dry-run")
    assert dry.returncode == 1, dry.stderr
    reported = sorted(line.split()[0] for line in dry.stdout.splitlines() if " is broken: " in line)
    assert reported == broken
    assert "checked 20000 blobs: 3 broken, 0 deleted" in dry.stdout and "1 skipped in tmp/" in dry.stdout
    assert "notes.txt" in dry.stderr and "short" in dry.stderr and "2 other files left alone" in dry.stdout
    assert all((store / h[:2] / h).exists() for h in broken)

    fix = prism("check-integrity", "--store-path", str(store), "--threads", "2")
    assert fix.returncode == 1 and "3 broken, 3 deleted" in fix.stdout, fix.stdout + fix.stderr
    remaining = {p.name for p in store.glob("??/*") if p.name != "short"}
    assert remaining == set(hashes) - set(broken)
    assert (store / "tmp" / hashes[0]).exists() and (store / "notes.txt").exists()

    clean = prism("check-integrity", "--store-path", str(store), "--threads", "1")
    assert clean.returncode == 0 and "checked 19997 blobs: 0 broken" in clean.stdout


def test_check_integrity_usage(tmp_path):
    assert prism("check-integrity", "--store-path", str(tmp_path), "--threads", "0").returncode == 2
    assert prism("check-integrity").returncode == 2
    assert_one_line_error(prism("check-integrity", "--store-path", str(tmp_path / "nope")), contains="not a directory")
