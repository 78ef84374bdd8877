"""`prism send ADDRESS:PORT FILE [--sd-cache DIR]`: encode a file into a stream and reflect it (spec §1.6).

The stream is made in one pass that keeps no blob (only the sd blob), then uploaded sd blob first; the
content blobs the server asks for are re-encrypted from the file as they are sent, so a file of any
size never sits in memory or on disk twice. With --sd-cache, the sd blob is kept as
`<DIR>/<FILE>.sdblob` and a later send of the same file re-uses its key and IVs, reproducing the
identical stream. Unlike reflector.go, sending without --sd-cache succeeds (exit 0).
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from appliance.blob import MAX_PLAINTEXT_PER_BLOB
from appliance.cli.client_support import CLIENT_TIMEOUT, client_errors
from appliance.cli.common import CommandError, parse_address, plural, progress
from appliance.clients.reflector import ReflectorClient
from appliance.stream import (
    FileBlobReader,
    InvalidStreamDescriptor,
    MadeStream,
    StreamDescriptor,
    make_stream,
    parse_sd_blob,
    write_atomic,
)

log = logging.getLogger("prism")


def sd_cache_path(cache_dir: str, path: str) -> str:
    """reflector.go's `<DIR>/<PATH>.sdblob` for a relative PATH; an absolute path or one that climbs
    out with `..` is placed by its real path, so the cache file always stays inside DIR."""
    norm = os.path.normpath(path)
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
        norm = os.path.realpath(path).lstrip(os.sep)
    return os.path.join(cache_dir, norm + ".sdblob")


def read_cached_sd(cache_file: str) -> StreamDescriptor | None:
    try:
        with open(cache_file, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandError(f"cannot read cached sd blob {cache_file}: {exc.strerror or exc}") from None
    try:
        return parse_sd_blob(raw)
    except InvalidStreamDescriptor as exc:
        log.warning("ignoring cached sd blob %s (%s): making a new stream", cache_file, exc)
        return None


def make(path: str, template: StreamDescriptor | None = None) -> MadeStream:
    """Encode the file with a progress bar (on a terminal)."""
    if not os.path.isfile(path):
        raise CommandError(f"{path}: not a readable file")
    pieces = -(-os.path.getsize(path) // MAX_PLAINTEXT_PER_BLOB)
    with progress(total=pieces, desc="encoding", unit="blob") as bar, client_errors(f"cannot encode {path}"):
        return make_stream(path, template=template, on_blob=lambda info, data: bar.update(1))


def run(args: argparse.Namespace) -> int:
    host, port = parse_address(args.address)
    cache_file = sd_cache_path(args.sd_cache, args.path) if args.sd_cache else None
    template = read_cached_sd(cache_file) if cache_file else None
    made = make(args.path, template)
    sd = made.descriptor
    if cache_file:
        with client_errors(f"cannot write sd cache {cache_file}"):
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            write_atomic(os.path.dirname(cache_file), os.path.basename(cache_file), sd.raw)
    total = len(sd.raw) + sum(b.length for b in sd.content_blobs)
    with progress(total=total, desc="sending", unit="B", unit_scale=True) as bar, \
            client_errors(f"reflecting to {host}:{port} failed"), \
            ReflectorClient(host, port, timeout=CLIENT_TIMEOUT) as client:
        stats = client.send_stream(sd.sd_hash, sd.raw, FileBlobReader(args.path, sd),
                                   on_blob=lambda h, size, sent: bar.update(size))
    log.info("sd blob %s, %s sent, %d already on the server", "sent" if stats.sd_sent else "already there",
             plural(stats.blobs_sent, "blob"), stats.blobs_skipped)
    print(json.dumps({"sd_hash": sd.sd_hash, "source_hash": made.source_hash}, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "send", help="encode a file into a stream and reflect it",
        description="Encode FILE into an LBRY stream and upload it to the reflector at ADDRESS:PORT: the sd blob "
                    "first, then the content blobs the server asks for. Prints the sd hash and the SHA-384 of the "
                    "file as JSON.")
    p.add_argument("address", metavar="ADDRESS:PORT", help="reflector upload address, e.g. 127.0.0.1:5566")
    p.add_argument("path", metavar="FILE", help="the file to send")
    p.add_argument("--sd-cache", default="", metavar="DIR",
                   help="directory that keeps the stream's sd blob, so sending the same file again reproduces "
                        "the identical stream")
    p.set_defaults(run=run)
