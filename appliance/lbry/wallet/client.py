"""A client for LBRY wallet servers (hubs): Electrum-style JSON-RPC over TCP, one JSON object per line.

Blocking sockets with deadlines, so it works from plain threads, scripts and (monkey-patched) gevent
workers alike. One client holds one connection; it is not meant to be shared between threads.
"""
from __future__ import annotations

import json
import logging
import random
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from appliance import __version__
from appliance.lbry.claims import ClaimError, ClaimValue, decode_value
from appliance.lbry.wallet.outputs import ERROR_CODE, decode_outputs
from appliance.lbry.wallet.script import ScriptError, claim_value
from appliance.lbry.wallet.tx import TransactionError, parse_transaction_hex

log = logging.getLogger("wallet")

CLIENT_NAME = f"reflector-appliance/{__version__}"
MAX_LINE = 16 * 1024 * 1024  # a raw transaction as hex is far smaller; a longer line is a broken server


class WalletError(Exception):
    """Anything that went wrong talking to a wallet server; the message is one line."""


class ServerError(WalletError):
    """The server answered this request with an error; the connection is still good."""


class TransportError(WalletError):
    """The connection failed or the server broke the protocol; the connection is no longer usable."""


class WalletTimeout(TransportError):
    """No answer within the time allowed."""


class ClaimLookupError(WalletError):
    """The outpoint holds no readable claim (nout out of range, no claim script, undecodable value)."""


def error_text(error: Any) -> str:
    """A JSON-RPC error object as one line "code: message", including the nested form
    {"code": C, "message": {"code": C2, "message": "..."}} some servers send."""
    if not isinstance(error, dict):
        return str(error)
    code, message = error.get("code"), error.get("message")
    if isinstance(message, dict):
        message = message.get("message")
    return f"{code}: {message}"


def parse_server(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise WalletError(f"invalid wallet server address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


class _Connection:
    """One TCP connection: writes requests with increasing ids, reads newline-delimited replies."""

    def __init__(self, address: str, sock: socket.socket):
        self.address = address
        self.sock = sock
        self.buffer = bytearray()
        self.next_id = 0
        self.broken: str | None = None

    def send(self, method: str, params: Sequence[Any], deadline: float) -> int:
        request_id = self.next_id
        self.next_id += 1
        line = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)})
        try:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            self.sock.sendall(line.encode() + b"\n")
        except TimeoutError:
            raise self._fail(WalletTimeout(f"{self.address}: timeout sending {method}")) from None
        except OSError as exc:
            raise self._fail(TransportError(f"{self.address}: {exc.strerror or exc}")) from None
        return request_id

    def _fail(self, exc: TransportError) -> TransportError:
        self.broken = str(exc)
        return exc

    def _read_line(self, deadline: float) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) > MAX_LINE:
                raise self._fail(TransportError(f"{self.address}: reply longer than {MAX_LINE} bytes"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WalletTimeout(f"{self.address}: timeout")
            try:
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise WalletTimeout(f"{self.address}: timeout") from None
            except OSError as exc:
                raise self._fail(TransportError(f"{self.address}: {exc.strerror or exc}")) from None
            if not chunk:
                raise self._fail(TransportError(f"{self.address}: connection closed by the server"))
            self.buffer += chunk

    def read_reply(self, deadline: float) -> dict[str, Any]:
        """The next reply that answers a request (notifications are skipped)."""
        while True:
            line = self._read_line(deadline).strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise self._fail(TransportError(f"{self.address}: invalid reply (not JSON): "
                                                f"{line[:60]!r}")) from None
            if not isinstance(message, dict):
                raise self._fail(TransportError(f"{self.address}: invalid reply (not a JSON object)"))
            if message.get("id") is None and "method" in message:
                log.debug("%s: ignoring notification %s", self.address, message.get("method"))
                continue
            return message

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _outcome(message: dict[str, Any]) -> Any:
    """The result of a reply, or a ServerError for an error reply."""
    if message.get("error") is not None:
        return ServerError(error_text(message["error"]))
    return message.get("result")


class WalletClient:
    """Talks to one of `servers` ("host:port"), tried in random order until one answers the version probe."""

    def __init__(self, servers: Iterable[str], *, connect_timeout: float = 5.0, request_timeout: float = 10.0,
                 client_name: str = CLIENT_NAME, protocol_version: str | None = None, shuffle: bool = True):
        self.servers = list(servers)
        if not self.servers:
            raise WalletError("no wallet servers configured")
        for address in self.servers:
            parse_server(address)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout  # reflector.go allows 1 s, too short for real round trips
        self.client_name = client_name
        self.protocol_version = protocol_version
        self.shuffle = shuffle
        self._conn: _Connection | None = None

    # --- connection --------------------------------------------------------------------------------------

    @property
    def address(self) -> str | None:
        return self._conn.address if self._conn else None

    def connect(self, exclude: Iterable[str] = ()) -> str:
        """Connect to the first server that answers `server.version`; return its address.
        WalletError naming every server's failure when none does."""
        self.close()
        candidates = [s for s in self.servers if s not in set(exclude)] or list(self.servers)
        if self.shuffle:
            random.shuffle(candidates)  # spread clients over the servers, as reflector.go does
        failures = []
        for address in candidates:
            try:
                self._conn = self._open(address)
            except WalletError as exc:
                failures.append(str(exc))
                log.debug("wallet server %s", exc)
                continue
            if failures:
                log.info("wallet connected to %s after failures: %s", address, "; ".join(failures))
            else:
                log.debug("wallet connected to %s", address)
            return address
        raise WalletError("failed to connect to a wallet server: " + "; ".join(failures))

    def _open(self, address: str) -> _Connection:
        host, port = parse_server(address)
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        except TimeoutError:
            raise WalletTimeout(f"{address}: connect timeout") from None
        except socket.gaierror as exc:
            raise TransportError(f"{address}: {exc.strerror}") from None
        except OSError as exc:
            raise TransportError(f"{address}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(address, sock)
        params = [self.client_name] + ([self.protocol_version] if self.protocol_version else [])
        try:
            outcome = self._exchange(conn, "server.version", params, time.monotonic() + self.connect_timeout)
        except WalletError:
            conn.close()
            raise
        if isinstance(outcome, ServerError):
            conn.close()
            raise TransportError(f"{address}: server.version refused: {outcome}")
        return conn

    def close(self) -> None:
        if self._conn:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> WalletClient:
        if self._conn is None:
            self.connect()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _live(self) -> _Connection:
        if self._conn is None:
            raise TransportError("not connected to a wallet server")
        if self._conn.broken:
            raise TransportError(self._conn.broken)
        return self._conn

    # --- requests ----------------------------------------------------------------------------------------

    @staticmethod
    def _exchange(conn: _Connection, method: str, params: Sequence[Any], deadline: float) -> Any:
        request_id = conn.send(method, params, deadline)
        while True:
            reply = conn.read_reply(deadline)
            if reply.get("id") == request_id:
                return _outcome(reply)
            # A late answer to a request that timed out earlier.
            log.debug("%s: ignoring reply to id %r", conn.address, reply.get("id"))

    def request(self, method: str, params: Sequence[Any] = ()) -> Any:
        """One call; its result, or ServerError / TransportError / WalletTimeout."""
        outcome = self._exchange(self._live(), method, params, time.monotonic() + self.request_timeout)
        if isinstance(outcome, ServerError):
            raise outcome
        return outcome

    def request_many(self, method: str, params_list: Sequence[Sequence[Any]], *, window: int = 64,
                     deadline: float | None = None) -> list[Any]:
        """Many calls pipelined over the connection (at most `window` unanswered). Returns one item per
        call: its result or a ServerError. TransportError / WalletTimeout (no reply for request_timeout,
        or `deadline` passed) fail the whole batch."""
        conn = self._live()
        results: list[Any] = [None] * len(params_list)
        pending: dict[int, int] = {}  # request id -> index in params_list
        next_index = 0
        while next_index < len(params_list) or pending:
            now = time.monotonic()
            wait_until = now + self.request_timeout
            if deadline is not None:
                if now >= deadline:
                    raise WalletTimeout(f"{conn.address}: {len(params_list) - next_index + len(pending)} "
                                        f"{method} calls unanswered at the deadline")
                wait_until = min(wait_until, deadline)
            while next_index < len(params_list) and len(pending) < window:
                pending[conn.send(method, params_list[next_index], wait_until)] = next_index
                next_index += 1
            try:
                reply = conn.read_reply(wait_until)
            except WalletTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise WalletTimeout(f"{conn.address}: {len(params_list) - next_index + len(pending)} "
                                        f"{method} calls unanswered at the deadline") from None
                raise
            index = pending.pop(reply.get("id"), None) if isinstance(reply.get("id"), int) else None
            if index is None:
                log.debug("%s: ignoring reply to id %r", conn.address, reply.get("id"))
                continue
            results[index] = _outcome(reply)
        return results

    # --- LBRY methods ------------------------------------------------------------------------------------

    def server_version(self) -> Any:
        return self.request("server.version", [self.client_name])

    def resolve(self, url: str) -> dict[str, Any]:
        """`blockchain.claimtrie.resolve [url]`: the one Output the URL resolves to."""
        result = self.request("blockchain.claimtrie.resolve", [url])
        try:
            outputs = decode_outputs(result)
        except ValueError as exc:
            raise ServerError(str(exc)) from None
        txos = outputs.get("txos", [])
        if len(txos) != 1:
            raise ServerError(f"expected 1 output, got {len(txos)}")
        error = txos[0].get("error")
        if error is not None:
            raise ServerError(f"{ERROR_CODE.name_of(error.get('code', 0))}: {error.get('text', '')}")
        return txos[0]

    def get_transaction(self, txid: str) -> str:
        """`blockchain.transaction.get [txid]`: the raw transaction as hex."""
        result = self.request("blockchain.transaction.get", [txid])
        if not isinstance(result, str):
            raise ServerError(f"transaction {txid}: result is not hex text")
        return result

    def get_claim(self, txid: str, nout: int) -> ClaimValue:
        """The claim in output `nout` of transaction `txid`."""
        return claim_in_transaction(self.get_transaction(txid), nout)

    def get_claims(self, outpoints: Sequence[tuple[str, int]], *, window: int = 64,
                   deadline: float | None = None) -> dict[tuple[str, int], ClaimValue | WalletError]:
        """The claims at many outpoints, each transaction fetched once, the fetches pipelined. Per-outpoint
        failures are returned as WalletError values; a failing connection raises TransportError."""
        txids = list(dict.fromkeys(txid for txid, _ in outpoints))
        fetched = dict(zip(txids, self.request_many("blockchain.transaction.get", [[t] for t in txids],
                                                    window=window, deadline=deadline), strict=True))
        out: dict[tuple[str, int], ClaimValue | WalletError] = {}
        for txid, nout in outpoints:
            raw = fetched[txid]
            if isinstance(raw, WalletError):
                out[(txid, nout)] = raw
                continue
            try:
                out[(txid, nout)] = claim_in_transaction(raw, nout)
            except WalletError as exc:
                out[(txid, nout)] = exc
        return out


def claim_in_transaction(raw_hex: Any, nout: int) -> ClaimValue:
    """Decode the claim in output `nout` of a raw transaction (hex); ClaimLookupError when there is none."""
    if not isinstance(raw_hex, str):
        raise ClaimLookupError("transaction result is not hex text")
    try:
        tx = parse_transaction_hex(raw_hex)
        if not 0 <= nout < len(tx.outputs):
            raise ClaimLookupError("nout not found")
        return decode_value(claim_value(tx.outputs[nout].script))
    except (TransactionError, ScriptError, ClaimError) as exc:
        raise ClaimLookupError(str(exc)) from None
