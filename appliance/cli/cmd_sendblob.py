"""`prism sendblob ADDRESS:PORT [FILE]`: send one random 1024-byte blob, or a file's whole stream (spec §1.7).

With FILE every blob is offered, whatever the server says it needs: the sd blob first, then each content
blob (re-encrypted from the file as it is sent). A blob the server already has is not an error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from appliance.blob import blob_hash
from appliance.cli.client_support import CLIENT_TIMEOUT, client_errors
from appliance.cli.cmd_send import make
from appliance.cli.common import parse_address, plural, progress
from appliance.clients.reflector import ReflectorClient
from appliance.stream import FileBlobReader

log = logging.getLogger("prism")

RANDOM_BLOB_SIZE = 1024


def run(args: argparse.Namespace) -> int:
    host, port = parse_address(args.address)
    if args.path is None:
        data = os.urandom(RANDOM_BLOB_SIZE)
        h = blob_hash(data)
        with client_errors(f"sending blob {h[:8]} to {host}:{port} failed"), \
                ReflectorClient(host, port, timeout=CLIENT_TIMEOUT) as client:
            sent = client.send_blob(h, data)
        log.info("blob %s %s", h[:8], "sent" if sent else "was already on the server")
        print(json.dumps({"blob_hash": h}, indent=2))
        return 0
    made = make(args.path)
    sd = made.descriptor
    reader = FileBlobReader(args.path, sd)
    sent = skipped = 0
    with progress(total=len(sd.blobs), desc="sending", unit="blob") as bar, \
            client_errors(f"sending {args.path} to {host}:{port} failed"), \
            ReflectorClient(host, port, timeout=CLIENT_TIMEOUT) as client:
        client.send_sd_blob(sd.sd_hash, sd.raw)
        bar.update(1)
        for info in sd.content_blobs:
            if client.send_blob(info.blob_hash, reader(info.blob_hash)):
                sent += 1
            else:
                skipped += 1
            bar.update(1)
    log.info("%s sent, %d already on the server", plural(sent, "content blob"), skipped)
    print(json.dumps({"sd_hash": sd.sd_hash, "source_hash": made.source_hash}, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sendblob", help="send a random blob, or every blob of a file's stream",
        description="Without FILE, upload one random 1024-byte blob and print its hash. With FILE, encode it "
                    "into a stream and offer every blob, sd blob first.")
    p.add_argument("address", metavar="ADDRESS:PORT", help="reflector upload address, e.g. 127.0.0.1:5566")
    p.add_argument("path", metavar="FILE", nargs="?", help="a file to send as a stream")
    p.set_defaults(run=run)
