"""A JSON-RPC 1.0 client for lbrycrd (Bitcoin Core's RPC over HTTP with basic auth).

Only what publishing needs from the wallet goes through it: unspent outputs, addresses, signing and
broadcasting. No private key passes through this client.
"""
from __future__ import annotations

import base64
import http.client
import itertools
import json
import socket
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_URL = "http://127.0.0.1:9245"  # lbrycrd's mainnet RPC port
COIN = 100_000_000  # deweys per LBC


class LbrycrdError(Exception):
    """Any failure talking to lbrycrd; the message is one line and never holds the password."""


class LbrycrdUnreachable(LbrycrdError):
    pass


class LbrycrdAuthError(LbrycrdError):
    pass


class LbrycrdRpcError(LbrycrdError):
    """lbrycrd answered the call with an error object."""

    def __init__(self, method: str, code: int, message: str):
        super().__init__(f"lbrycrd {method}: {message} (code {code})")
        self.method, self.code, self.rpc_message = method, code, message


def to_deweys(amount: Decimal | float | str) -> int:
    """An LBC amount as lbrycrd prints it (a JSON number) in deweys, exactly."""
    value = Decimal(str(amount)) * COIN
    if value != value.to_integral_value():
        raise ValueError(f"{amount} LBC is not a whole number of deweys")
    return int(value)


def format_lbc(deweys: int) -> str:
    return f"{Decimal(deweys) / COIN:.8f}"


class LbrycrdClient:
    def __init__(self, url: str = DEFAULT_URL, *, user: str = "", password: str = "", timeout: float = 30.0):
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LbrycrdError(f"invalid lbrycrd URL {redact(url)!r}: expected http://[USER:PASSWORD@]HOST:PORT")
        self.host, self.port, self.https = parts.hostname, parts.port or 9245, parts.scheme == "https"
        self.path = parts.path or "/"
        self.user = unquote(parts.username or "") or user
        self.password = unquote(parts.password or "") or password
        self.timeout = timeout
        self.where = f"{parts.scheme}://{self.host}:{self.port}"
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC 1.0 call; the result, or an LbrycrdError subclass."""
        body = json.dumps({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)})
        headers = {"Content-Type": "application/json"}
        if self.user or self.password:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        conn_class = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = conn_class(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", self.path, body, headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = "timed out" if isinstance(exc, socket.timeout) else (getattr(exc, "strerror", None) or str(exc))
            raise LbrycrdUnreachable(f"cannot reach lbrycrd at {self.where}: {reason}") from None
        finally:
            conn.close()
        if response.status in (401, 403):
            raise LbrycrdAuthError(f"lbrycrd at {self.where} refused the credentials (HTTP {response.status}): "
                                   "check rpcuser and rpcpassword")
        try:
            answer = json.loads(raw, parse_float=Decimal)
        except ValueError:
            raise LbrycrdError(f"lbrycrd at {self.where} answered {method} with HTTP {response.status} and no "
                               f"JSON: {raw[:80]!r}") from None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:
            code = error.get("code", 0) if isinstance(error, dict) else 0
            message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
            raise LbrycrdRpcError(method, code, message)
        if not isinstance(answer, dict) or "result" not in answer:
            raise LbrycrdError(f"lbrycrd at {self.where} answered {method} without a result")
        return answer["result"]

    # The calls publishing makes -------------------------------------------------------------------
    def list_unspent(self, min_confirmations: int = 1) -> list[dict]:
        return self.call("listunspent", min_confirmations)

    def new_address(self) -> str:
        return self.call("getnewaddress")

    def raw_change_address(self) -> str:
        return self.call("getrawchangeaddress")

    def sign(self, raw_hex: str) -> str:
        """The transaction signed by lbrycrd's wallet; LbrycrdError unless every input is signed."""
        result = self.call("signrawtransactionwithwallet", raw_hex)
        if not result.get("complete"):
            errors = "; ".join(e.get("error", "?") for e in result.get("errors", [])) or "not every input signed"
            raise LbrycrdError(f"lbrycrd could not sign the transaction: {errors}")
        return result["hex"]

    def broadcast(self, raw_hex: str) -> str:
        return self.call("sendrawtransaction", raw_hex)


def redact(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
