"""The reference reflector for scripts/bench ingest: the least a server must do, and no fsync.

It speaks the upload protocol (handshake, sd blob, content blobs), checks each blob's SHA-384, writes it
to a temp file and renames it into DIR, and acknowledges it without fsync: a ceiling that a durable
server can approach but not pass. One thread per connection; it asks for every blob (the bench sends
fresh streams). Prints "ready PORT" once it listens on 127.0.0.1.

Usage: refserver.py DIR
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading

CHUNK = 256 * 1024


class Connection:
    def __init__(self, sock: socket.socket, root: str):
        self.sock, self.root, self.buf = sock, root, b""

    def message(self) -> dict | None:
        decoder = json.JSONDecoder()
        while True:
            text = self.buf.lstrip()
            if text:
                try:
                    obj, end = decoder.raw_decode(text.decode())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pass
                else:
                    self.buf = text[end:]
                    return obj
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def blob(self, name: str, size: int) -> bool:
        sha = hashlib.sha384()
        tmp = os.path.join(self.root, f".{name}.{threading.get_ident()}.tmp")
        with open(tmp, "wb", buffering=0) as out:
            head, self.buf = self.buf[:size], self.buf[size:]
            sha.update(head)
            out.write(head)
            left = size - len(head)
            buffer = memoryview(bytearray(CHUNK))
            while left:
                n = self.sock.recv_into(buffer, min(left, CHUNK))
                if not n:
                    raise ConnectionError("client went away")
                sha.update(buffer[:n])
                out.write(buffer[:n])
                left -= n
        if sha.hexdigest() != name:
            os.unlink(tmp)
            return False
        os.rename(tmp, os.path.join(self.root, name))
        return True

    def send(self, obj: dict) -> None:
        self.sock.sendall(json.dumps(obj).encode())

    def serve(self) -> None:
        hello = self.message()
        if hello is None:
            return
        self.send({"version": hello.get("version", 1)})
        while (request := self.message()) is not None:
            sd = "sd_blob_hash" in request
            name = request["sd_blob_hash" if sd else "blob_hash"]
            size = request["sd_blob_size" if sd else "blob_size"]
            self.send({"send_sd_blob": True} if sd else {"send_blob": True})
            ok = self.blob(name, size)
            self.send({"received_sd_blob": ok} if sd else {"received_blob": ok})
            if not ok:
                return


def handle(sock: socket.socket, root: str) -> None:
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            Connection(sock, root).serve()
        except OSError:
            pass


def main() -> None:
    root = sys.argv[1]
    os.makedirs(root, exist_ok=True)
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    print(f"ready {listener.getsockname()[1]}", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock, root), daemon=True).start()


if __name__ == "__main__":
    main()
