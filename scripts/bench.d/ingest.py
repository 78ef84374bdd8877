"""scripts/bench ingest: upload ingest through the full stack vs local storage, in the same run (issue 6).

Full stack: an SDK-style client (ours: handshake v1, sd blob first, `needed_blobs` honoured) -> :5566 of
`prism reflector` on S3 (moto's server, or s3rver with --s3 s3rver) + MySQL (a throwaway MariaDB started
as the test fixtures start it), with its default disk cache written through on upload.
Baseline: the same appliance on local storage, the embedded default (no disk cache in front of it).

Each uploader is a process that reflects its own fresh stream of 2 MiB blobs (encrypted before the clock
starts); the figure is every byte sent / the wall time from the common start to the last receipt. For 1
and 8 parallel uploaders it prints MB/s for both stacks, medians of --runs runs, and full stack / local
storage as the ratio measured in the same run. Everything runs on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from appliance.clients.reflector import ReflectorClient  # noqa: E402
from appliance.stream import StreamEncoder  # noqa: E402
from tests.appliance_process import Appliance  # noqa: E402
from tests.servers import mariadb as mariadb_server  # noqa: E402
from tests.servers.s3 import S3Server  # noqa: E402

MB = 1_000_000


def uploader(port: int, stream_bytes: int, start: mp.Barrier, results: mp.Queue) -> None:
    """One uploader process: make a stream, wait for the common start, reflect it, report (bytes, end)."""
    encoder = StreamEncoder(io.BytesIO(os.urandom(stream_bytes)), stream_name="ingest.bin")
    blobs = {info.blob_hash: data for info, data in encoder.blobs()}
    sd = encoder.descriptor
    start.wait()
    try:
        with ReflectorClient("127.0.0.1", port, timeout=300) as client:
            stats = client.send_stream(sd.sd_hash, sd.raw, blobs.__getitem__)
        if stats.blobs_sent != len(blobs):
            raise RuntimeError(f"the server took {stats.blobs_sent} of {len(blobs)} blobs")
        results.put((stats.bytes_sent, time.monotonic(), None))
    except Exception as exc:  # reported to the parent, which stops the benchmark with it
        results.put((0, time.monotonic(), f"{type(exc).__name__}: {exc}"))


def ingest(port: int, uploaders: int, total_bytes: int) -> float:
    """MB/s of `uploaders` parallel uploads of total_bytes / uploaders each."""
    ctx = mp.get_context("fork")
    start, results = ctx.Barrier(uploaders + 1), ctx.Queue()
    procs = [ctx.Process(target=uploader, args=(port, total_bytes // uploaders, start, results))
             for _ in range(uploaders)]
    for p in procs:
        p.start()
    start.wait(timeout=600)  # every stream is encrypted: the clock starts now, for all of them at once
    started = time.monotonic()
    outcomes = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
    errors = [error for _, _, error in outcomes if error]
    if errors:
        raise SystemExit(f"bench ingest: an upload failed: {errors[0]}")
    return sum(sent for sent, _, _ in outcomes) / (max(end for _, end, _ in outcomes) - started) / MB


class Stacks:
    """The two appliances under test, and the MariaDB and S3 servers behind the full stack."""

    def __init__(self, tmp: Path, s3: str, workers: int):
        self.tmp = tmp
        self.mariadb = mariadb_server.MariaDB()
        self.mariadb.start()
        self.mariadb.create_user()
        self.s3 = S3Server(s3)
        self.s3.start()
        self.workers = workers
        self.apps: list[Appliance] = []

    def start(self, name: str, *flags: str) -> Appliance:
        app = Appliance(self.tmp / name, ("--workers", str(self.workers), *flags))
        self.apps.append(app)
        return app.start(timeout=60)

    def full(self) -> tuple[Appliance, object]:
        """A fresh database and bucket, and an appliance on them; returns (appliance, bucket)."""
        db = self.mariadb.create_database(with_schema=True)
        bucket = self.s3.bucket()
        conf = self.tmp / f"{db.name}.json"
        conf.write_text(json.dumps({**bucket.config_values(), "db_conn": db.dsn}))
        return self.start(f"full-{db.name}", "--conf", str(conf)), bucket

    def close(self) -> None:
        for app in self.apps:
            app.kill_all()
        self.s3.stop()
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
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=64, help="MB uploaded per measurement, split among the uploaders")
    parser.add_argument("--uploaders", default="1,8", help="comma-separated numbers of parallel uploaders")
    parser.add_argument("--s3", choices=("moto", "s3rver"), default="moto")
    parser.add_argument("--workers", type=int, default=2, help="appliance worker processes (both stacks)")
    args = parser.parse_args()
    counts = [int(n) for n in args.uploaders.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    stacks = Stacks(tmp, args.s3, args.workers)
    try:
        local = stacks.start("local")  # local storage: the embedded default
        full, bucket = stacks.full()
        print(f"upload ingest, {args.mb} MB of 2 MiB blobs per measurement, {args.workers} workers, "
              f"{os.cpu_count()} cores, medians of {args.runs} runs")
        print(f"full stack: :5566 -> {args.s3} S3 + MariaDB (+ default disk cache); baseline: local storage")
        print(f"{'uploaders':>9}  {'full MB/s':>10}  {'local MB/s':>10}  {'full/local':>10}")
        for n in counts:
            fulls, locals_, ratios = [], [], []
            for _ in range(args.runs):
                f = ingest(full.ports["receiver"], n, args.mb * MB)
                empty_bucket(bucket)
                loc = ingest(local.ports["receiver"], n, args.mb * MB)
                fulls.append(f)
                locals_.append(loc)
                ratios.append(f / loc)
            print(f"{n:>9}  {statistics.median(fulls):>10.1f}  {statistics.median(locals_):>10.1f}  "
                  f"{statistics.median(ratios):>10.2f}")
    finally:
        stacks.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
