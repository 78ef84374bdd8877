"""A local stand-in for an LBRY wallet server (hub): a real TCP server on 127.0.0.1 speaking newline-delimited
JSON-RPC 2.0 as hubs do, answering server.version, blockchain.claimtrie.resolve and blockchain.transaction.get
from transactions the test builds. Modes: "normal", "silent" (accepts, never answers), "garbage" (answers
every request with bytes that are not JSON) and "version-only" (answers the version probe, then nothing)."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from appliance.lbry.wallet.outputs import encode_outputs
from appliance.lbry.wallet.script import (
    claim_name_script,
    pay_to_pubkey_hash,
    support_claim_script,
    update_claim_script,
)
from appliance.lbry.wallet.tx import Transaction, TxInput, TxOutput

NOT_FOUND = 1


def payout() -> bytes:
    return pay_to_pubkey_hash(os.urandom(20))


def claim_transaction(*scripts: bytes) -> Transaction:
    """A transaction spending a random outpoint into one output per script (0.01 LBC each)."""
    return Transaction(version=1, inputs=[TxInput(os.urandom(32).hex(), 0, b"\x00" * 10)],
                       outputs=[TxOutput(1_000_000, s) for s in scripts], locktime=0)


def name_output(name: str, value: bytes) -> bytes:
    return claim_name_script(name.encode(), value, payout())


def update_output(name: str, claim_hash: bytes, value: bytes) -> bytes:
    return update_claim_script(name.encode(), claim_hash, value, payout())


def support_output(name: str, claim_hash: bytes) -> bytes:
    return support_claim_script(name.encode(), claim_hash, payout())


class FakeWalletServer:
    def __init__(self, mode: str = "normal", *, nested_errors: bool = False, notify: bool = True,
                 hold_until: int = 0):
        self.mode = mode
        self.nested_errors = nested_errors  # error replies in the nested {"message": {...}} form
        self.notify = notify  # push a notification before each reply (clients must skip it)
        self.hold_until = hold_until  # hold replies until this many requests are waiting, then answer in reverse
        self.transactions: dict[str, str] = {}
        self.urls: dict[str, tuple[str, int, int]] = {}
        self.requests: list[dict[str, Any]] = []
        self.results: dict[tuple[str, Any], Any] = {}  # (method, first param) -> result to answer instead
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    # --- test data ---------------------------------------------------------------------------------------

    def add_transaction(self, tx: Transaction) -> str:
        self.transactions[tx.txid] = tx.serialize().hex()
        return tx.txid

    def add_url(self, url: str, txid: str, nout: int, height: int = 1000) -> None:
        self.urls[url] = (txid, nout, height)

    def methods(self) -> list[str]:
        with self.lock:
            return [r.get("method") for r in self.requests]

    # --- serving -----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        held: list[dict] = []
        held_since = None
        try:
            while not self.stopped.is_set():
                conn.settimeout(0.2 if held else None)
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    chunk = None
                if chunk == b"":
                    return
                buffer += chunk or b""
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    with self.lock:
                        self.requests.append(request)
                    if self.mode == "silent" or (self.mode == "version-only"
                                                 and request.get("method") != "server.version"):
                        continue
                    if self.mode == "garbage":
                        conn.sendall(b"\x00\xffthis is not json-rpc }{\n")
                        continue
                    if self.hold_until and request.get("method") != "server.version":
                        held.append(request)
                        held_since = held_since or time.monotonic()
                        continue
                    self._reply(conn, request)
                if held and (len(held) >= self.hold_until or time.monotonic() - held_since > 2):
                    for request in reversed(held):
                        self._reply(conn, request)
                    held, held_since = [], None
        except OSError:
            return
        finally:
            conn.close()

    def _reply(self, conn: socket.socket, request: dict) -> None:
        if self.notify:
            note = {"jsonrpc": "2.0", "method": "blockchain.headers.subscribe", "params": [{"height": 1234}]}
            conn.sendall(json.dumps(note).encode() + b"\n")
        try:
            reply = {"jsonrpc": "2.0", "result": self._answer(request["method"], request.get("params", [])),
                     "id": request["id"]}
        except LookupError as exc:
            code, message = exc.args
            error = {"code": code, "message": {"code": code, "message": message}} if self.nested_errors \
                else {"code": code, "message": message}
            reply = {"jsonrpc": "2.0", "error": error, "id": request["id"]}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def _answer(self, method: str, params: list) -> Any:
        override = (method, params[0] if params else None)
        if override in self.results:
            return self.results[override]
        if method == "server.version":
            return ["FakeHub 0.1", "0.107.0"]
        if method == "blockchain.transaction.get":
            if params[0] not in self.transactions:
                raise LookupError(2, f"daemon error: No such mempool or blockchain transaction. {params[0]}")
            return self.transactions[params[0]]
        if method == "blockchain.claimtrie.resolve":
            url = params[0]
            if url not in self.urls:
                return encode_outputs({"txos": [{"error": {"code": NOT_FOUND,
                                                           "text": f"Could not find claim at {url}."}}]})
            txid, nout, height = self.urls[url]
            return encode_outputs({"txos": [{"tx_hash": bytes.fromhex(txid)[::-1], "nout": nout, "height": height,
                                             "claim": {"short_url": url, "canonical_url": url}}],
                                   "total": 1})
        raise LookupError(-32601, f"unknown method \"{method}\"")

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
        self.thread.join(timeout=5)

    def __enter__(self) -> FakeWalletServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
