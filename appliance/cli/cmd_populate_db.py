"""`prism populate-db --store-path DIR`: record an existing cache directory in the localdb index (spec §1.12).

Every blob file of reflector.go's layout (`<DIR>/<h[0:2]>/<h>`) becomes a stored row of the `blob_` table
of `localdb_conn` with its real size and `last_accessed_at` a day ago (reflector.go's age for blobs of
unknown use). Rows that already exist are updated (marked stored, length corrected) and keep their access
time, so the command can be rerun, or resumed after an error. Unlike reflector.go: `tmp/` and files that
are not blobs are skipped, values are parameterised, one batch of 10,000 is one transaction.
"""
from __future__ import annotations

import argparse
import itertools
import os

from appliance import config as cfg
from appliance.cache.localdb import LocalDB
from appliance.cache.scan import ScanCounts, iter_blob_files
from appliance.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, load_config, plural, progress
from appliance.db import BATCH, DatabaseError
from appliance.dsn import DsnError

KEYS = ["localdb_conn"]


def run(args: argparse.Namespace) -> int:
    root = args.store_path
    if not root:
        raise CommandError("store-path must be defined", EXIT_USAGE)
    if not os.path.isdir(root):
        raise CommandError(f"store path {root} is not a directory", EXIT_USAGE)
    config = load_config(args, cfg.overrides_from_args(args, KEYS))
    try:
        db = LocalDB(config.localdb_conn)
    except DsnError as exc:
        raise CommandError(f"localdb_conn: {exc}", EXIT_USAGE) from None
    counts = ScanCounts()
    recorded = 0
    try:
        db.ping()  # fail before walking a large directory
        files = iter_blob_files(root, counts)
        with progress(desc="recording", unit=" blobs", unit_scale=True) as bar:
            while batch := list(itertools.islice(files, BATCH)):
                db.adopt_blobs(batch)
                recorded += len(batch)
                bar.update(len(batch))
    except DatabaseError as exc:
        resume = (f"; {plural(recorded, 'blob was', 'blobs were')} recorded before it (rerunning is safe)"
                  if recorded else "")
        raise CommandError(f"{exc}{resume}", EXIT_FAILURE) from None
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename or root}: {exc.strerror or exc}", EXIT_FAILURE) from None
    finally:
        db.close()
    print(f"recorded {plural(recorded, 'blob')} ({plural(counts.blob_bytes, 'byte')}) from {root} in {db.dsn}; "
          f"{plural(counts.skipped, 'other file')} skipped")
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "populate-db", help="record the blobs of a cache directory in the localdb index",
        description="Record every blob file of a disk cache directory (<DIR>/<h[0:2]>/<h>) as stored in the "
                    "blob_ table of localdb_conn, with its size, so the localdb cache manager can evict it. "
                    "Existing rows are updated; rerunning is safe.")
    p.add_argument("--store-path", default="", metavar="DIR", help="the cache directory")
    cfg.add_flags(p, KEYS)
    p.set_defaults(run=run)
