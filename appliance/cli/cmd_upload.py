"""`prism upload PATH [--workers N] [--skipExistsCheck] [--deleteBlobsAfterUpload]`: blob files to S3 + MySQL.

PATH is a blob file, or a directory: its regular files, and the blobs of reflector.go's disk layout
(`<PATH>/<h[0:2]>/<h>`) under it. A file's name must be its SHA-384; one that is not (or is empty, or too
large for a blob) is reported and skipped, and counts as an error. A file holding a JSON object is an sd
blob: it is validated, stored and recorded with its stream; every other file is a content blob. Unless
--skipExistsCheck, blobs the database lists as stored are skipped. Work is spread over --workers threads
(S3 and MySQL calls wait on the network, not the CPU). Ends with a summary line; exit 1 when any file
failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from appliance import config as cfg
from appliance.blob import MAX_BLOB_SIZE, blob_hash, is_valid_hash
from appliance.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, load_config, plural, progress
from appliance.db import Database, DatabaseError
from appliance.dsn import DsnError
from appliance.errors import OriginError
from appliance.stores.dbbacked import DBBackedStore
from appliance.stores.s3 import S3Store

log = logging.getLogger("prism")
_PREFIX_DIR = re.compile(r"[0-9a-f]{2}")


@dataclass
class Counts:
    total: int = 0
    already_stored: int = 0
    sd: int = 0
    blobs: int = 0
    errors: int = 0


def blob_files(path: str) -> list[str]:
    """The files to upload: PATH itself, or the regular files in it and in its 2-hex-char prefix directories."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise CommandError(f"{path}: no such file or directory", EXIT_USAGE)
    files = []
    with os.scandir(path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_file():
                files.append(entry.path)
            elif entry.is_dir() and _PREFIX_DIR.fullmatch(entry.name):  # reflector.go's layout; not tmp/
                with os.scandir(entry.path) as inner:
                    files += sorted(e.path for e in inner if e.is_file())
    return files


def upload_one(store: DBBackedStore, path: str, delete_after: bool) -> str:
    """Upload one file; returns "sd" or "blob", raises ValueError/OSError/OriginError/DatabaseError."""
    name = os.path.basename(path)
    with open(path, "rb") as f:
        data = f.read(MAX_BLOB_SIZE + 1)
    if not data:
        raise ValueError("empty file, not a blob")
    if len(data) > MAX_BLOB_SIZE:
        raise ValueError(f"larger than a blob ({MAX_BLOB_SIZE} bytes)")
    actual = blob_hash(data)
    if actual != name:
        raise ValueError(f"file name does not match hash ({name} != {actual}), skipping")
    kind = "sd" if _is_json_object(data) else "blob"
    if kind == "sd":
        store.put_sd(actual, data)  # validates the descriptor before anything is stored
    else:
        store.put(actual, data)
    if delete_after:
        os.unlink(path)
    return kind


def _is_json_object(data: bytes) -> bool:
    """reflector.go's heuristic: a blob that parses as JSON is an sd blob (content blobs are ciphertext)."""
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise CommandError("--workers must be at least 1", EXIT_USAGE)
    files = blob_files(args.path)
    config = load_config(args)
    if not config.bucket_name:
        raise CommandError("no S3 bucket configured: set bucket_name (and aws_id, aws_secret, bucket_region, "
                           "s3_endpoint) in the config", EXIT_USAGE)
    if not config.db_conn:
        raise CommandError("no database configured: set db_conn in the config", EXIT_USAGE)
    try:
        db = Database.from_dsn(config.db_conn, pool_size=args.workers + 1)
    except DsnError as exc:
        raise CommandError(f"db_conn: {exc}", EXIT_USAGE) from None
    s3 = S3Store.from_config(config)
    store = DBBackedStore(s3, db)
    counts = Counts(total=len(files))
    try:
        s3.check_bucket()  # one clear error instead of one per file
        if args.skipExistsCheck:
            todo = files
        else:
            names = [os.path.basename(p) for p in files]
            present = db.has_blobs(n for n in names if is_valid_hash(n))
            todo = [p for p, n in zip(files, names, strict=True) if n not in present]
            counts.already_stored = len(files) - len(todo)
    except (OriginError, DatabaseError) as exc:
        raise CommandError(str(exc)) from None
    try:
        _upload_all(store, todo, args, counts)
    finally:
        db.close()
    print(f"uploaded {args.path}: {plural(counts.total, 'file')}, {counts.already_stored} already stored, "
          f"{plural(counts.sd, 'sd blob')}, {plural(counts.blobs, 'content blob')}, {plural(counts.errors, 'error')}")
    return EXIT_FAILURE if counts.errors else EXIT_OK


def _upload_all(store: DBBackedStore, paths: list[str], args: argparse.Namespace, counts: Counts) -> None:
    pool = ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="upload")
    try:
        futures = {pool.submit(upload_one, store, p, args.deleteBlobsAfterUpload): p for p in paths}
        with progress(total=len(paths), desc="uploading", unit=" blobs") as bar:
            for future in as_completed(futures):
                bar.update(1)
                try:
                    kind = future.result()
                except (ValueError, OSError, OriginError, DatabaseError) as exc:
                    counts.errors += 1
                    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                    print(f"prism: {futures[future]}: {reason}", file=sys.stderr)
                    continue
                if kind == "sd":
                    counts.sd += 1
                else:
                    counts.blobs += 1
    finally:
        # On Ctrl-C: files not started yet are not started; the ones in flight finish.
        pool.shutdown(wait=True, cancel_futures=True)


def _workers(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {value!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "upload", help="upload blob files to S3 and record them in the database",
        description="Upload blob files (named by their hash) to S3 and record them in MySQL, as reflector.go's "
                    "`prism upload`: PATH is a file or a directory (its files and its <h[0:2]>/<h> blobs). "
                    "Uses aws_id, aws_secret, bucket_region, bucket_name, s3_endpoint and db_conn from the "
                    "config. Exit 1 when any file failed.")
    p.add_argument("path", metavar="PATH", help="a blob file or a directory of blob files")
    p.add_argument("--workers", type=_workers, default=1, metavar="N", help="parallel uploads (default 1)")
    p.add_argument("--skipExistsCheck", nargs="?", const=True, default=False, type=cfg.parse_bool, metavar="BOOL",
                   help="upload every file, even those the database lists as stored")
    p.add_argument("--deleteBlobsAfterUpload", nargs="?", const=True, default=False, type=cfg.parse_bool,
                   metavar="BOOL", help="delete each local file once it is uploaded and recorded")
    p.set_defaults(run=run)
