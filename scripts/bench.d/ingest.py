"""scripts/bench ingest: raw-protocol upload ingest, ours vs a no-fsync reference, local vs S3 + MySQL (issue 19).

Streams are encoded before anything is timed and kept as files: one directory per stream with its sd blob,
its content blobs and a manifest. A raw reflector-protocol client (handshake v1, the sd blob, then every
content blob, each from its file with sendfile, waiting for each receipt) sends one fresh stream per
upload; each uploader is its own process; the figure is every byte sent / the wall time from the common
start to the last receipt. In every round, in alternating order:
- reference: scripts/bench.d/refserver.py, which checks the SHA-384 and stores without fsync (the ceiling);
- ours: `prism reflector` on local storage (the embedded default: durable, no disk cache);
- full: `prism reflector` on S3 (moto's server, or s3rver with --s3 s3rver) + MySQL (a throwaway MariaDB,
  as the test fixtures start it), with its default disk cache written through on upload.
- bare PUT (with the full stack): no appliance at all, each uploader PUTs its stream's blob files straight
  to the same S3 server (a presigned URL each, one kept-alive http.client connection, nothing else): what
  the S3 server alone takes on this machine, the ceiling of the full stack.
This machine is a VM that hands freed memory back to its host, so new page-cache pages cost 10x what they cost
on a dedicated machine, and which server gets pages the guest still holds varies from round to round;
--warm-memory touches the free memory first (see warm_memory). Before the rounds, untimed, every server takes
a few dozen small streams (its workers' first uploads make their S3 clients and database connections). It
prints medians of the per-round ratios: ours/reference at 1 uploader, ours 8 uploaders / ours 1, full/ours at
1 and at 8 uploaders, and the bare PUTs against local storage and against the full stack. Then the cost of
durability on this disk, with the appliance's own disk writer and no network: committing a written 2 MiB blob
by a rename (what the reference does) against making it durable (what an upload waits for before its
receipt), and the share of the reference that this allows at 1 uploader.
Everything runs on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import io
import json
import mmap
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from appliance.stream import StreamEncoder  # noqa: E402
from tests.appliance_process import Appliance  # noqa: E402
from tests.servers import mariadb as mariadb_server  # noqa: E402
from tests.servers.s3 import S3Server  # noqa: E402

MB = 1_000_000
PARALLEL = 8


def encode_stream(directory: Path, size: int) -> None:
    """A fresh random stream as files: <sd hash>, <blob hash>..., manifest.json."""
    directory.mkdir(parents=True)
    encoder = StreamEncoder(io.BytesIO(os.urandom(size)), stream_name="ingest.bin")
    blobs = []
    for info, data in encoder.blobs():
        (directory / info.blob_hash).write_bytes(data)
        blobs.append([info.blob_hash, len(data)])
    sd = encoder.descriptor
    (directory / sd.sd_hash).write_bytes(sd.raw)
    (directory / "manifest.json").write_text(json.dumps({"sd": [sd.sd_hash, len(sd.raw)], "blobs": blobs}))


class Replies:
    """The server's JSON replies on one connection, one at a time."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf, self.decoder = sock, b"", json.JSONDecoder()

    def next(self) -> dict:
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    obj, end = self.decoder.raw_decode(text.decode())
                    self.buf = text[end:]
                    return obj
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pass
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk


def raw_upload(port: int, stream: Path) -> int:
    """Reflect one stream from its files over one connection; returns the bytes of blobs sent."""
    manifest = json.loads((stream / "manifest.json").read_text())
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = Replies(sock)
        sock.sendall(b'{"version": 1}')
        if replies.next().get("version") != 1:
            raise RuntimeError("handshake refused")
        sent = 0
        for i, (name, size) in enumerate([manifest["sd"], *manifest["blobs"]]):
            kind = "sd_blob" if i == 0 else "blob"
            sock.sendall(json.dumps({f"{kind}_hash": name, f"{kind}_size": size}).encode())
            if replies.next().get(f"send_{kind}") is not True:
                raise RuntimeError(f"the server did not ask for {kind} {name[:8]}: the stream is not fresh")
            with open(stream / name, "rb") as f:
                sock.sendfile(f)
            if replies.next().get(f"received_{kind}") is not True:
                raise RuntimeError(f"no receipt for {kind} {name[:8]}")
            sent += size
    return sent


def presigned_puts(bucket, streams: list[Path]) -> dict[str, str]:
    """A presigned PUT URL (path and query) for every blob of the streams, made before anything is timed."""
    client = bucket.client()
    urls = {}
    for stream in streams:
        manifest = json.loads((stream / "manifest.json").read_text())
        for name, _ in [manifest["sd"], *manifest["blobs"]]:
            url = urlsplit(client.generate_presigned_url(
                "put_object", Params={"Bucket": bucket.bucket, "Key": name, "ACL": "public-read"}, ExpiresIn=3600))
            urls[name] = f"{url.path}?{url.query}"
    return urls


def bare_put(endpoint: str, urls: dict[str, str], stream: Path) -> int:
    """PUT each blob file of a stream (the sd blob first) as its own object at its presigned URL, waiting for
    each answer, over one kept-alive connection: no appliance, no hashing, no database, no copy to disk."""
    manifest = json.loads((stream / "manifest.json").read_text())
    server = urlsplit(endpoint)
    conn = http.client.HTTPConnection(server.hostname, server.port, timeout=300)
    sent = 0
    try:
        for name, size in [manifest["sd"], *manifest["blobs"]]:
            conn.request("PUT", urls[name], body=(stream / name).read_bytes(), headers={"Content-Length": str(size)})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"bare PUT of {name[:8]}: HTTP {response.status}")
            sent += size
    finally:
        conn.close()
    return sent


def durability_cost_ms(root: Path, blobs: int = 40) -> tuple[float, float]:
    """Median ms of the appliance's own disk writer's `commit` for a 2 MiB blob on this filesystem, as a
    cache copy (rename, what the reference does) and durably (fdatasync, rename, directory fsync: what an
    upload waits for before its receipt). Only the commit is timed: the writes before it are the same in
    both, and what they cost here depends on which memory the page cache gets (see warm_memory).
    Alternated, fresh blobs each time, after the page cache is written back (so no fsync waits for other
    processes' writes)."""
    from appliance.stores.disk import DiskStore

    os.sync()
    store = DiskStore(str(root))
    data = os.urandom(2 * 1024 * 1024)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(2 * blobs):
        durable = i % 2 == 1
        name = hashlib.sha384(data + i.to_bytes(4, "big")).hexdigest()  # a fresh name (the bytes are not checked)
        with store.writer(name, durable=durable, verify=False) as writer:
            for offset in range(0, len(data), 256 * 1024):
                writer.write(data[offset:offset + 256 * 1024])
            started = time.perf_counter()
            writer.commit()
            times[durable].append((time.perf_counter() - started) * 1000)
    return statistics.median(times[False]), statistics.median(times[True])


def warm_memory(keep: int = 2 << 30) -> int:
    """Touch, then free, all but `keep` bytes of the memory available now; returns the bytes touched.

    This machine is a VM with free page reporting: memory the kernel frees goes back to the host, and the
    next first touch of each page faults in the host (a 256 KiB write into new page cache: 0.6 ms instead of
    0.05). The host takes such memory back gradually (minutes for 20 GiB), so for a while after this, new
    page-cache pages cost what they cost on a dedicated machine, for every server alike.
    """
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    size = max(0, available - keep) // mmap.PAGESIZE * mmap.PAGESIZE
    if size:
        area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for offset in range(0, size, mmap.PAGESIZE):
            area[offset] = 1
        area.close()
    return size


def uploader(send, stream: Path, start: mp.Barrier, results: mp.Queue) -> None:
    start.wait()
    try:
        results.put((send(stream), time.monotonic(), None))
    except Exception as exc:  # reported to the parent, which stops the benchmark with it
        results.put((0, time.monotonic(), f"{type(exc).__name__}: {exc}"))


def ingest(send, streams: list[Path]) -> float:
    """MB/s of one uploader per stream, all started at once; `send(stream)` uploads one, returns its bytes."""
    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(len(streams) + 1), ctx.Queue()
    procs = [ctx.Process(target=uploader, args=(send, s, start, results)) for s in streams]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    started = time.monotonic()
    outcomes = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
    errors = [error for _, _, error in outcomes if error]
    if errors:
        raise SystemExit(f"bench ingest: an upload failed: {errors[0]}")
    return sum(sent for sent, _, _ in outcomes) / (max(end for _, end, _ in outcomes) - started) / MB


class Reference:
    """scripts/bench.d/refserver.py in its own process."""

    def __init__(self, root: Path):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("refserver.py")), str(root)],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            raise SystemExit("bench ingest: the reference server did not start")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Stacks:
    """The appliances under test, and the MariaDB and S3 servers behind the full stack (started by full())."""

    def __init__(self, tmp: Path, s3: str, workers: int):
        self.tmp = tmp
        self.mariadb = None
        self.s3 = S3Server(s3)
        self.workers = workers
        self.apps: list[Appliance] = []

    def start(self, name: str, *flags: str) -> Appliance:
        app = Appliance(self.tmp / name, ("--workers", str(self.workers), *flags))
        self.apps.append(app)
        return app.start(timeout=60)

    def ceiling_bucket(self):
        """Another bucket on the S3 server of the full stack, for the bare PUTs."""
        return self.s3.bucket()

    def full(self) -> tuple[Appliance, object]:
        """A fresh database and bucket, and an appliance on them; returns (appliance, bucket)."""
        self.mariadb = mariadb_server.MariaDB()
        self.mariadb.start()
        self.mariadb.create_user()
        self.s3.start()
        db = self.mariadb.create_database(with_schema=True)
        bucket = self.s3.bucket()
        conf = self.tmp / f"{db.name}.json"
        conf.write_text(json.dumps({**bucket.config_values(), "db_conn": db.dsn}))
        return self.start(f"full-{db.name}", "--conf", str(conf)), bucket

    def close(self) -> None:
        for app in self.apps:
            app.kill_all()
        self.s3.stop()
        if self.mariadb is not None:
            self.mariadb.destroy()


def empty_bucket(bucket) -> None:
    """Drop what a measurement stored (moto keeps every object in its memory)."""
    client = bucket.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket.bucket, Delete={"Objects": keys})


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench ingest", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--runs", type=int, default=3, help="rounds; medians of the per-round ratios")
    parser.add_argument("--stream-mb", type=int, default=64, help="MiB of plain data per stream")
    parser.add_argument("--s3", choices=("moto", "s3rver"), default="moto")
    parser.add_argument("--workers", type=int, default=2, help="appliance worker processes (both stacks)")
    parser.add_argument("--no-full", action="store_true", help="skip the S3 + MySQL stack")
    parser.add_argument("--warm-memory", action="store_true",
                        help="before the rounds, touch all but 2 GiB of free memory, so that on a VM that hands freed "
                             "memory back to its host (as this one does) new page-cache pages cost what they do on a "
                             "dedicated machine for the next few minutes (2-3 s per GiB touched)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    stacks = None
    reference = None
    try:
        started = time.monotonic()
        todo = [(tmp / "streams" / f"s{i}", args.stream_mb * 1024 * 1024) for i in range(args.runs * (1 + PARALLEL))]
        warm_count = 3 * max(PARALLEL, 4 * args.workers)  # fresh 1 MiB streams, a third per server
        todo += [(tmp / "streams" / f"w{i}", 1024 * 1024) for i in range(warm_count)]
        with mp.get_context("fork").Pool(os.cpu_count() or 1) as pool:
            pool.starmap(encode_stream, todo)
        streams, warmups = [d for d, _ in todo[:-warm_count]], [d for d, _ in todo[-warm_count:]]
        print(f"encoded {len(streams)} streams of {args.stream_mb} MiB in {time.monotonic() - started:.0f}s")
        reference = Reference(tmp / "reference")
        stacks = Stacks(tmp, args.s3, args.workers)
        ours = stacks.start("local")
        full, bucket = (None, None) if args.no_full else stacks.full()
        bare = None if full is None else stacks.ceiling_bucket()
        print(f"raw-protocol ingest, one fresh {args.stream_mb} MiB stream per uploader, {args.workers} workers, "
              f"{os.cpu_count()} cores, medians of {args.runs} rounds")
        figures: dict[str, list[float]] = {}

        def measure(name: str, send, batch: list[Path]) -> None:
            # Untimed: write back what the previous measurement left dirty, so that no server's fsyncs wait
            # behind another's deferred writes (the reference's above all)
            os.sync()
            figures.setdefault(name, []).append(ingest(send, batch))
            if name.startswith("full"):
                empty_bucket(bucket)
            elif name.startswith("bare"):
                empty_bucket(bare)

        def protocol(app: Appliance):
            return functools.partial(raw_upload, app.ports["receiver"])

        def direct(target, batch: list[Path]):
            return functools.partial(bare_put, target.endpoint, presigned_puts(target, batch))

        # Warm-up, not timed: each worker makes its S3 client and database connection on its first upload,
        # and a connection lands on a worker by the kernel's hash, so several small streams go to every server.
        warm = [functools.partial(raw_upload, reference.port), protocol(ours), *([protocol(full)] if full else [])]
        for send, batch in zip(warm, [warmups[i::len(warm)] for i in range(len(warm))], strict=True):
            ingest(send, batch)
        if full is not None:
            empty_bucket(bucket)

        if args.warm_memory:
            warmed_at = time.monotonic()
            warmed = warm_memory()
            print(f"touched {warmed / 2**30:.1f} GiB of free memory in {time.monotonic() - warmed_at:.0f}s")
        for r in range(args.runs):
            one, many = streams[r * (1 + PARALLEL)], streams[r * (1 + PARALLEL) + 1:(r + 1) * (1 + PARALLEL)]
            plan = [("reference 1", functools.partial(raw_upload, reference.port), [one]),
                    ("ours 1", protocol(ours), [one]), (f"ours {PARALLEL}", protocol(ours), many)]
            if full is not None:
                plan += [("full 1", protocol(full), [one]), (f"full {PARALLEL}", protocol(full), many),
                         ("bare PUT 1", direct(bare, [one]), [one]), (f"bare PUT {PARALLEL}", direct(bare, many), many)]
            for name, send, batch in plan if r % 2 == 0 else reversed(plan):
                measure(name, send, batch)
            done = ", ".join(f"{k} {v[-1]:.0f}" for k, v in figures.items())
            print(f"  round {r + 1} MB/s: {done}", flush=True)

        def ratio(a: str, b: str) -> str:
            return f"{statistics.median(x / y for x, y in zip(figures[a], figures[b], strict=True)):.2f}"

        for name, values in figures.items():
            print(f"{name:>12}: {statistics.median(values):7.1f} MB/s (median)")
        print(f"ours/reference, 1 uploader:        {ratio('ours 1', 'reference 1')}  (goal >= 0.9)")
        plain, durable = durability_cost_ms(tmp / "durability")
        per_blob = 2 * 1024 * 1024 / 1e6 / statistics.median(figures["reference 1"]) * 1000
        print(f"  durability on this disk: committing a written 2 MiB blob takes {plain:.2f} ms renamed, {durable:.2f} "
              f"ms made durable (fdatasync, rename, directory fsync); the reference takes {per_blob:.1f} ms per blob, "
              f"so a server that waits for the difference before each receipt reaches at most "
              f"{per_blob / (per_blob + durable - plain):.2f} of it")
        print(f"ours {PARALLEL} uploaders / ours 1:         {ratio(f'ours {PARALLEL}', 'ours 1')}  (goal >= 1.6)")
        if full is not None:
            print(f"{args.s3} S3 + MySQL / local, 1 uploader: {ratio('full 1', 'ours 1')}  (goal >= 0.9 with s3rver)")
            many = ratio(f"full {PARALLEL}", f"ours {PARALLEL}")
            print(f"{args.s3} S3 + MySQL / local, {PARALLEL} uploaders: {many}")
            bare_many = ratio(f"bare PUT {PARALLEL}", f"ours {PARALLEL}")
            print(f"the S3 server's ceiling, bare PUTs with no appliance: {args.s3} / local, 1 uploader "
                  f"{ratio('bare PUT 1', 'ours 1')}, {PARALLEL} uploaders {bare_many}")
            print(f"S3 + MySQL / bare PUTs: 1 uploader {ratio('full 1', 'bare PUT 1')}, "
                  f"{PARALLEL} uploaders {ratio(f'full {PARALLEL}', f'bare PUT {PARALLEL}')}")
    finally:
        if reference is not None:
            reference.stop()
        if stacks is not None:
            stacks.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
