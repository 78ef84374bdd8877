"""kill -9 of the receiving process between an upload's final data byte and its receipt, many times over.

The server is the gevent receiver on local storage (appliance.servers.standalone --store disk:DIR: the
worker's receiver and durable DiskStore, with the fsyncs off the hub). Each round uploads a fresh blob,
waits until its temp file holds every byte (the final byte has been read and written), kills the process
at a random moment of the commit (fdatasync, rename, directory fsync, receipt), and checks that the blob
is either absent or whole - never short - both while it happens (a watcher reads the final path in a
loop) and after. A blob whose receipt arrived must be there. After a restart the temp files are gone and
a re-upload of what is missing succeeds.
"""
import os
import random
import signal
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from server_process import ServerProcess, recv_json

from appliance.blob import blob_hash
from appliance.protocol import reflector as codec
from appliance.stores.disk import _pid_alive, _temp_owner

ROUNDS = 32
AT_ONCE = 4  # servers killed concurrently (sharing one storage directory, as workers do)


class Watcher(threading.Thread):
    """Reads a blob's final path as fast as it can; records any time it is visible with other bytes."""

    def __init__(self, path: str, data: bytes):
        super().__init__(daemon=True)
        self.path, self.data = path, data
        self.stop = threading.Event()
        self.seen_whole = 0
        self.bad: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    got = f.read()
            except FileNotFoundError:
                continue
            if got == self.data:
                self.seen_whole += 1
            else:
                self.bad.append(len(got))


def _handshake(sock: socket.socket) -> None:
    sock.sendall(codec.encode_handshake(1))
    assert recv_json(sock)[0] == {"version": 1}


def _temp_size(tmp_dir: str, h: str) -> int | None:
    """Size of the blob's temp file, None when there is none (not created yet, or already renamed)."""
    for name in os.listdir(tmp_dir):
        if name.startswith(h):
            try:
                return os.stat(os.path.join(tmp_dir, name)).st_size
            except FileNotFoundError:
                return None
    return None


def _upload(root: str, data: bytes, kill_after: float | None) -> float | None:
    """Upload one blob and, `kill_after` seconds after the final byte is in the temp file, kill -9 the server;
    the seconds from that moment to the receipt, or None if the kill came first. No kill with None."""
    h = blob_hash(data)
    final = os.path.join(root, h[:2], h)
    watcher = Watcher(final, data)
    with ServerProcess("--store", f"disk:{root}", "--receiver-port", "0") as srv:
        watcher.start()
        with srv.connect("receiver") as sock:
            _handshake(sock)
            sock.sendall(codec.encode_blob_request(h, len(data)))
            assert recv_json(sock)[0] == {"send_blob": True}
            sock.sendall(data)
            deadline = time.monotonic() + 30
            while _temp_size(os.path.join(root, "tmp"), h) != len(data) and not os.path.exists(final):
                assert time.monotonic() < deadline, "the server never wrote the whole blob"
            written = time.monotonic()
            if kill_after is not None:
                time.sleep(kill_after)
                srv.proc.send_signal(signal.SIGKILL)
                srv.proc.wait()
            sock.settimeout(10)
            try:
                receipt = recv_json(sock)[0]
            except (EOFError, ConnectionResetError):
                receipt = None
            took = time.monotonic() - written
    watcher.stop.set()
    watcher.join()
    assert watcher.bad == [], f"blob {h[:8]} was visible with {watcher.bad[:5]} bytes instead of {len(data)}"
    if os.path.exists(final):
        with open(final, "rb") as f:
            assert f.read() == data, "a visible blob is whole"
    if receipt is None:
        return None
    assert receipt == {"received_blob": True}
    assert os.path.exists(final), "an acknowledged blob is stored"
    return took


def test_kill_9_between_the_final_byte_and_the_receipt_never_leaves_a_short_blob(tmp_path):
    root = str(tmp_path / "storage")
    os.makedirs(os.path.join(root, "tmp"))
    rng = random.Random(19)
    uploaded = [os.urandom(rng.randint(1_500_000, 2_097_152)) for _ in range(ROUNDS)]
    with ThreadPoolExecutor(AT_ONCE) as pool:
        # The kills are spread over the commit (fsync, rename, receipt) as long as it takes on this machine
        # now: first, uploads with no kill measure it, as many at once as the rounds run.
        calibration = str(tmp_path / "calibration")
        os.makedirs(os.path.join(calibration, "tmp"))
        window = statistics.median(pool.map(lambda _: _upload(calibration, os.urandom(2_097_152), None),
                                            range(2 * AT_ONCE)))
        delays = [rng.uniform(0, window) for _ in range(ROUNDS)]
        outcomes = list(pool.map(lambda i: _upload(root, uploaded[i], delays[i]), range(ROUNDS)))
    acknowledged = sum(took is not None for took in outcomes)
    # A good share of the kills must land before the receipt, or this test would not be testing the window it
    # names (with the kills spread over a typical commit, about half do: some commits are quicker).
    assert acknowledged <= 3 * ROUNDS // 4, f"{acknowledged} of {ROUNDS} receipts arrived before the kill " \
                                            f"(the commit took {window * 1000:.1f} ms without a kill)"

    with ServerProcess("--store", f"disk:{root}", "--receiver-port", "0") as srv:
        with srv.connect("receiver") as sock:
            _handshake(sock)  # answered: the server has opened its store (and cleaned up) by now
            left = [n for n in os.listdir(os.path.join(root, "tmp")) if not _pid_alive(_temp_owner(n))]
            assert left == [], "a restart removes the dead writers' temp files"
            for data in uploaded:
                h = blob_hash(data)
                sock.sendall(codec.encode_blob_request(h, len(data)))
                answer = recv_json(sock)[0]
                if answer == {"send_blob": False}:
                    continue  # stored whole before the kill
                assert answer == {"send_blob": True}
                sock.sendall(data)
                assert recv_json(sock)[0] == {"received_blob": True}
    for data in uploaded:
        h = blob_hash(data)
        with open(os.path.join(root, h[:2], h), "rb") as f:
            assert f.read() == data
