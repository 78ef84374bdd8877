"""A scripted lbrycrd for `prism publish` tests: real HTTP with basic auth, real JSON-RPC 1.0 framing, canned
unspent outputs. It checks the unsigned transaction it is asked to sign (known inputs, a claim output that
parses, amounts that add up), "signs" it with placeholder input scripts, and records every call."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from appliance.lbry.address import encode_address, payout_script
from appliance.lbry.lbrycrd import COIN
from appliance.lbry.wallet.script import parse_claim_script
from appliance.lbry.wallet.tx import parse_transaction_hex

USER, PASSWORD = "lbry", "s3cret-rpc-password"


def address(seed: str) -> str:
    return encode_address(0x55, hashlib.new("ripemd160", seed.encode()).digest())


def utxo(seed: str, lbc: str, nout: int = 0, **extra) -> dict:
    return {"txid": hashlib.sha256(seed.encode()).hexdigest(), "vout": nout, "address": address(seed),
            "amount": Decimal(lbc), "confirmations": 6, "spendable": True, "solvable": True, "safe": True, **extra}


class FakeLbrycrd:
    def __init__(self, unspent: list[dict], *, reject: str = ""):
        self.unspent = unspent
        self.reject = reject  # a sendrawtransaction error message, or "" to accept
        self.calls: list[tuple[str, list]] = []
        self.signed: list[str] = []
        self.problems: list[str] = []  # what the signing check found wrong in a transaction it was given
        self._addresses = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="jsonrpc"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                method, params = request["method"], request["params"]
                fake.calls.append((method, params))
                try:
                    answer = {"result": fake.dispatch(method, params), "error": None, "id": request["id"]}
                    status = 200
                except RpcError as exc:
                    answer = {"result": None, "error": {"code": exc.code, "message": str(exc)}, "id": request["id"]}
                    status = 500  # as bitcoind answers JSON-RPC 1.0 errors
                body = json.dumps(answer, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    # -- the RPC methods -------------------------------------------------------------------------------
    def dispatch(self, method: str, params: list):
        if method == "listunspent":
            return self.unspent
        if method in ("getnewaddress", "getrawchangeaddress"):
            self._addresses += 1
            return address(f"{method}-{self._addresses}")
        if method == "signrawtransactionwithwallet":
            return self.sign(params[0])
        if method == "sendrawtransaction":
            if self.reject:
                raise RpcError(-26, self.reject)
            if params[0] not in self.signed:
                raise RpcError(-22, "TX decode failed")
            return parse_transaction_hex(params[0]).txid
        raise RpcError(-32601, "Method not found")

    def sign(self, raw_hex: str) -> dict:
        tx = parse_transaction_hex(raw_hex)
        known = {(u["txid"], u["vout"]): round(u["amount"] * COIN) for u in self.unspent}
        spent = 0
        for txin in tx.inputs:
            if (txin.prev_txid, txin.prev_nout) not in known:
                self.problems.append(f"unknown input {txin.prev_txid}:{txin.prev_nout}")
                continue
            if txin.script:
                self.problems.append("an input was already signed")
            spent += known[(txin.prev_txid, txin.prev_nout)]
        claim = parse_claim_script(tx.outputs[0].script) if tx.outputs else None
        if claim is None or claim.kind != "name":
            self.problems.append("output 0 is not a claim")
        if sum(o.value for o in tx.outputs) > spent:
            self.problems.append("outputs spend more than the inputs")
        for out in tx.outputs[1:]:
            if out.script[:1] != payout_script(address("x"))[:1]:
                self.problems.append("a change output does not pay an address")
        for txin in tx.inputs:  # a placeholder signature and public key, where lbrycrd would put real ones
            txin.script = bytes([71]) + b"\x30" * 71 + bytes([33]) + b"\x02" * 33
        signed = tx.serialize().hex()
        self.signed.append(signed)
        return {"hex": signed, "complete": not self.problems}


class RpcError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
