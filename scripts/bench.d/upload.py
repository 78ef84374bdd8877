"""Upload-ingest load for scripts/bench: reflect one fresh 200 MB stream, print MB/s of the upload alone.

Usage: upload.py RECEIVER_PORT TMP_DIR
"""
import io
import os
import sys
import time

from appliance.clients.reflector import ReflectorClient
from appliance.stream import StreamEncoder

STREAM_BYTES = 200 * 1000 * 1000


def main() -> None:
    port = int(sys.argv[1])
    encoder = StreamEncoder(io.BytesIO(os.urandom(STREAM_BYTES)), stream_name="bench.bin")
    blobs = {info.blob_hash: data for info, data in encoder.blobs()}  # encrypted before the clock starts
    sd = encoder.descriptor
    started = time.monotonic()
    with ReflectorClient("127.0.0.1", port, timeout=120) as client:
        stats = client.send_stream(sd.sd_hash, sd.raw, blobs.__getitem__)
    elapsed = time.monotonic() - started
    if stats.blobs_sent != len(blobs):
        raise SystemExit(f"upload: the server took {stats.blobs_sent} of {len(blobs)} blobs")
    print(f"{stats.bytes_sent / elapsed / 1e6:.1f}")


if __name__ == "__main__":
    main()
