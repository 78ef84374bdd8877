"""`prism getstream ADDRESS:PORT SDHASH [--http] [-o FILE]`: download, verify and decrypt a stream (spec §1.8).

Blobs come over the TCP peer protocol (one connection for the whole stream) or, with --http, from the
HTTP blob server. Every blob's SHA-384 is checked and the sd blob is verified as the LBRY SDK does. The
file is written under a temporary name next to its destination and renamed only when complete, so a
failure never leaves a partial file. By default the destination is the sd blob's suggested file name,
sanitised, in the current directory (never outside it); with -o, the given file (or that directory).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from appliance.cli.client_support import CLIENT_TIMEOUT, client_errors, hash_argument
from appliance.cli.common import CommandError, parse_address, progress
from appliance.clients.http import HttpBlobClient
from appliance.clients.peer import PeerClient
from appliance.errors import ProtocolError
from appliance.stream import BlobInfo, StreamDescriptor, decrypt_stream, parse_sd_blob, sanitize_file_name


def destination(descriptor: StreamDescriptor, output: str | None) -> str:
    """Where the file goes: -o as given (a directory gets the suggested name), else the cwd."""
    default = time.strftime("stream_%Y%m%d_%H%M%S")
    name = sanitize_file_name(descriptor.suggested_file_name, default=default)
    if output is None:
        return os.path.join(os.getcwd(), name)
    if os.path.isdir(output):
        return os.path.join(output, name)
    return output


def write_stream(descriptor: StreamDescriptor, get_blob: Callable[[BlobInfo], bytes], path: str) -> int:
    """Decrypt into a temp file beside `path`, then rename it into place; on failure remove it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)[:40]}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, \
                progress(total=len(descriptor.content_blobs), desc="downloading", unit="blob") as bar:
            total = decrypt_stream(descriptor, get_blob, out, on_blob=lambda info, n: bar.update(1))
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it the mode of a normal new file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return total


def run(args: argparse.Namespace) -> int:
    host, port = parse_address(args.address)
    sd_hash = hash_argument(args.sd_hash, "sd hash")
    if args.http:
        client = HttpBlobClient(f"{host}:{port}", timeout=CLIENT_TIMEOUT)

        def fetch(h: str, length: int | None) -> bytes:
            data, _ = client.get(h)
            if length is not None and len(data) != length:
                raise ProtocolError(f"blob {h[:8]} is {len(data)} bytes, the sd blob says {length}")
            return data
    else:
        client = PeerClient(host, port, timeout=CLIENT_TIMEOUT)
        fetch = client.get_blob
    with client:
        with client_errors(f"cannot get sd blob {sd_hash[:8]} from {host}:{port}"):
            descriptor = parse_sd_blob(fetch(sd_hash, None))
        path = destination(descriptor, args.output)
        with client_errors(f"downloading stream {sd_hash[:8]} from {host}:{port} failed"):
            try:
                write_stream(descriptor, lambda info: fetch(info.blob_hash, info.length), path)
            except PermissionError as exc:
                raise CommandError(f"cannot write {path}: {exc.strerror}") from None
    print(path)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "getstream", help="download and decrypt a stream",
        description="Download the stream SDHASH from ADDRESS:PORT over the TCP peer protocol (or HTTP), verify "
                    "every blob and write the decrypted file; prints the path written.")
    p.add_argument("address", metavar="ADDRESS:PORT", help="TCP peer address (e.g. 127.0.0.1:5567), or the HTTP "
                                                             "blob server's with --http (e.g. 127.0.0.1:5569)")
    p.add_argument("sd_hash", metavar="SDHASH", help="the stream's sd blob hash")
    p.add_argument("--http", action="store_true", help="download over HTTP (GET /blob?hash=) instead")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="output file, or a directory for the suggested name (default: the stream's suggested "
                        "file name in the current directory)")
    p.set_defaults(run=run)
