"""`prism check-integrity --store-path DIR [--threads N] [--dry-run]`: re-hash every blob of a store (spec §1.13).

The store uses reflector.go's layout, `<DIR>/<h[0:2]>/<h>`. Every such file is hashed by a pool of
processes (hashing is CPU-bound: one process per core by default); a file whose SHA-384 differs from its
name is broken and is deleted, or only reported with --dry-run. Files under `tmp/` (uploads in progress)
are skipped, and files whose name or place does not fit the layout are reported, never deleted. All
work finishes before the summary is printed. Exit 1 when broken blobs (or unreadable files) were found.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

from appliance.blob import is_valid_hash
from appliance.cli.common import EXIT_FAILURE, EXIT_OK, CommandError, plural, progress

BATCH = 256  # files per task: enough to amortise the pool's IPC, small enough to spread the work
READ_SIZE = 1 << 20


def hash_file(path: str) -> str:
    h = hashlib.sha384()
    with open(path, "rb") as f:
        while chunk := f.read(READ_SIZE):
            h.update(chunk)
    return h.hexdigest()


def check_batch(paths: list[str]) -> list[tuple[str, str | None, str | None]]:
    """(path, actual hash, error) for every file that is broken or unreadable; vanished files are skipped."""
    problems = []
    for path in paths:
        try:
            actual = hash_file(path)
        except FileNotFoundError:
            continue  # deleted since the listing (eviction, another check): nothing to check
        except OSError as exc:
            problems.append((path, None, exc.strerror or str(exc)))
            continue
        if actual != os.path.basename(path):
            problems.append((path, actual, None))
    return problems


def scan(root: str) -> tuple[list[str], list[str], int]:
    """(blob paths, unexpected paths, files skipped under tmp/) of a store directory."""
    blobs, unexpected, in_tmp = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == "tmp":
            in_tmp += len(filenames)
            for sub in dirnames:
                in_tmp += sum(len(files) for _, _, files in os.walk(os.path.join(dirpath, sub)))
            dirnames.clear()
            continue
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.sep not in rel and rel != "." and is_valid_hash(name) and name[:2] == rel:
                blobs.append(path)
            else:
                unexpected.append(path)
    return blobs, unexpected, in_tmp


def run(args: argparse.Namespace) -> int:
    root = args.store_path
    if not root:
        raise CommandError("--store-path is required", 2)
    if not os.path.isdir(root):
        raise CommandError(f"store path {root} is not a directory")
    blobs, unexpected, in_tmp = scan(root)
    for path in unexpected:
        print(f"not a blob of this layout, left alone: {path}", file=sys.stderr)
    batches = [blobs[i:i + BATCH] for i in range(0, len(blobs), BATCH)]
    problems = []
    if args.threads == 1 or len(batches) <= 1:
        for batch in progress(batches, desc="checking", unit="batch"):
            problems += check_batch(batch)
    else:
        # All tasks are submitted before the progress bar starts its thread; the pool forks first.
        with ProcessPoolExecutor(max_workers=min(args.threads, len(batches))) as pool:
            futures = [pool.submit(check_batch, batch) for batch in batches]
            for future in progress(as_completed(futures), total=len(futures), desc="checking", unit="batch"):
                problems += future.result()
    broken = sorted((p, actual) for p, actual, error in problems if error is None)
    unreadable = sorted((p, error) for p, actual, error in problems if error is not None)
    deleted = 0
    for path, actual in broken:
        print(f"{os.path.basename(path)} is broken: actual hash {actual}" + ("" if args.dry_run else ", deleted"))
        if not args.dry_run:
            try:
                os.unlink(path)
                deleted += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                print(f"prism: cannot delete {path}: {exc.strerror or exc}", file=sys.stderr)
    for path, error in unreadable:
        print(f"prism: cannot read {path}: {error}", file=sys.stderr)
    print(f"checked {plural(len(blobs), 'blob')}: {len(broken)} broken, {deleted} deleted, {len(unreadable)} "
          f"unreadable; {plural(len(unexpected), 'other file')} left alone, {in_tmp} skipped in tmp/")
    return EXIT_FAILURE if broken or unreadable else EXIT_OK


def _threads(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thread count {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("--threads must be at least 1")
    return n


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check-integrity", help="re-hash every blob of a store and delete the broken ones",
        description="Check every blob file of a reflector.go disk layout (<DIR>/<h[0:2]>/<h>) against its "
                    "SHA-384 and delete the broken ones (only report them with --dry-run). Exit 1 when broken "
                    "blobs were found.")
    p.add_argument("--store-path", required=True, metavar="DIR", help="the store directory")
    p.add_argument("--threads", type=_threads, default=os.cpu_count() or 1, metavar="N",
                   help="worker processes (default: one per core)")
    p.add_argument("--dry-run", action="store_true", help="only report broken blobs, delete nothing")
    p.set_defaults(run=run)
