"""HTTP/3 load generator for scripts/bench: CONNECTIONS QUIC connections x STREAMS concurrent GETs each of random
blobs from /get/{hash} until a deadline (appliance.http3.client, the client Http3Store uses).

Usage: h3load.py PORT HASHES_FILE SECONDS CONNECTIONS STREAMS   -> prints "<bytes> <blobs> <elapsed seconds>"
No request starts after SECONDS; the ones in flight then are completed and counted, and the elapsed time runs
to the last one (2 MiB responses over 32 streams finish in waves: cutting them off would miscount).
"""
import asyncio
import random
import sys

from appliance.blob import MAX_BLOB_SIZE
from appliance.http3.client import H3Client


async def main(port: int, hashes: list[str], seconds: float, connections: int, streams: int) -> tuple[int, int, float]:
    loop = asyncio.get_running_loop()
    addr = ("127.0.0.1", port)
    clients = [H3Client(f"127.0.0.1:{port}") for _ in range(connections)]
    for client in clients:  # handshakes before the clock starts, as wrk connects first
        await client.get(addr, f"/has/{hashes[0]}", timeout=10, max_body=1024)
    started = loop.time()
    deadline = started + seconds
    totals = [0, 0]

    async def worker(client: H3Client) -> None:
        while loop.time() < deadline:
            resp = await client.get(addr, f"/get/{random.choice(hashes)}", timeout=120, max_body=MAX_BLOB_SIZE)
            if resp.status != 200:
                raise SystemExit(f"h3load: status {resp.status}: {resp.body[:200]!r}")
            totals[0] += len(resp.body)
            totals[1] += 1

    await asyncio.gather(*(worker(c) for c in clients for _ in range(streams)))
    elapsed = loop.time() - started
    for client in clients:
        await client.close()
    return totals[0], totals[1], elapsed


if __name__ == "__main__":
    port, path, secs, conns, per = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    total_bytes, blobs, took = asyncio.run(main(port, open(path).read().split(), secs, conns, per))
    print(total_bytes, blobs, f"{took:.3f}")
