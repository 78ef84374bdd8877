"""`prism getstream ADDRESS:PORT SDHASH [--http] [-o FILE]`: download, verify and decrypt a stream (spec §1.8).

Blobs come over the TCP peer protocol (one connection for the whole stream) or, with --http, from the
HTTP blob server. Every blob's SHA-384 is checked and the sd blob is verified as the LBRY SDK does. The
file is written under a temporary name next to its destination and renamed only when complete, so a
failure never leaves a partial file. By default the destination is the sd blob's suggested file name,
sanitised, in the current directory (never outside it); with -o, the given file (or that directory). An
existing file is never replaced unless --overwrite is given (checked before the download, and again,
atomically, when the finished file is put in place). The path written is printed, absolute.
"""
from __future__ import annotations

import argparse
import errno
import os
import tempfile
import time
from collections.abc import Callable

from appliance.cli.client_support import CLIENT_TIMEOUT, client_errors, hash_argument
from appliance.cli.common import CommandError, parse_address, progress
from appliance.clients.connection import ForeignServer, SilentServer
from appliance.clients.http import HttpBlobClient, NotHttp
from appliance.clients.peer import PeerClient
from appliance.errors import ProtocolError
from appliance.stream import BlobInfo, StreamDescriptor, decrypt_stream, parse_sd_blob, sanitize_file_name


def destination(descriptor: StreamDescriptor, output: str | None) -> str:
    """Where the file goes (absolute): -o as given (a directory gets the suggested name), else the cwd."""
    default = time.strftime("stream_%Y%m%d_%H%M%S")
    name = sanitize_file_name(descriptor.suggested_file_name, default=default)
    if output is None:
        return os.path.join(os.getcwd(), name)
    if os.path.isdir(output):
        return os.path.abspath(os.path.join(output, name))
    return os.path.abspath(output)


def refuse_existing(path: str) -> CommandError:
    return CommandError(f"{path} already exists; not replacing it (use --overwrite to replace it)")


def check_destination(path: str, overwrite: bool) -> None:
    """Refuse before downloading anything: an existing file (without --overwrite), or a missing directory."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise CommandError(f"cannot write {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise CommandError(f"cannot write {path}: it is a directory")
    if not overwrite and os.path.lexists(path):
        raise refuse_existing(path)


def _put_in_place(tmp: str, path: str, overwrite: bool) -> None:
    """Rename the finished temp file to `path`; without `overwrite`, only if `path` still does not exist."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` appeared meanwhile: never replaces a file
    except FileExistsError:
        raise refuse_existing(path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if os.path.lexists(path):  # a file system without hard links: check, then rename
            raise refuse_existing(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def write_stream(descriptor: StreamDescriptor, get_blob: Callable[[BlobInfo], bytes], path: str,
                 overwrite: bool = False) -> int:
    """Decrypt into a temp file beside `path`, then put it in place; on failure remove it.

    Errors name `path`, never the temp file."""
    directory = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)[:40]}.", suffix=".part")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out, \
                progress(total=len(descriptor.content_blobs), desc="downloading", unit="blob") as bar:
            total = decrypt_stream(descriptor, get_blob, out, on_blob=lambda info, n: bar.update(1))
            out.flush()
            os.fsync(out.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it the mode of a normal new file
        _put_in_place(tmp, path, overwrite)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return total


def http_hint(exc: BaseException) -> str:
    """What to do when the TCP peer client reached an HTTP server (or one that never answers)."""
    if isinstance(exc, ForeignServer) and exc.is_http:
        return "to download from an HTTP blob server, add --http"
    if isinstance(exc, SilentServer):
        return "for an HTTP blob server, add --http"
    return ""


def peer_hint(exc: BaseException) -> str:
    """What to do when --http reached a server that does not speak HTTP."""
    return "for a TCP peer port, leave out --http" if isinstance(exc, NotHttp) else ""


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
    hint = peer_hint if args.http else http_hint
    with client:
        with client_errors(f"cannot get sd blob {sd_hash[:8]} from {host}:{port}", hint):
            descriptor = parse_sd_blob(fetch(sd_hash, None))
        path = destination(descriptor, args.output)
        check_destination(path, args.overwrite)
        with client_errors(f"downloading stream {sd_hash[:8]} from {host}:{port} failed", hint):
            try:
                write_stream(descriptor, lambda info: fetch(info.blob_hash, info.length), path, args.overwrite)
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
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists (default: "
                                                            "refuse, exit 1)")
    p.set_defaults(run=run)
