"""HTTP blob client: `GET`/`HEAD {base}/blob?hash=H` of a reflector or blobcache (spec §3c).

    client = HttpBlobClient("127.0.0.1:5569", timeout=30, edge_token="")
    data, trace = client.get(h)     # verified bytes + the server's Via trace with our `http` hop
    client.has(h)                   # HEAD: 204 (or 200) True, 404 False

One requests.Session keeps the connection alive across calls. 404 raises BlobNotFound (carrying the
trace); another status raises OriginError "upstream error. Status code: N (body)".
"""
from __future__ import annotations

import time

import requests
import urllib3

from appliance import metrics
from appliance.blob import MAX_BLOB_SIZE, blob_hash, check_hash
from appliance.clients.connection import ConnectFailed
from appliance.errors import BlobNotFound, HashMismatch, OriginError, ProtocolError
from appliance.trace import Trace


class NotHttp(ProtocolError):
    """The server accepted the connection but did not answer in HTTP (e.g. a TCP peer or upload port)."""


class HttpBlobClient:
    def __init__(self, base_url: str, timeout: float = 30.0, edge_token: str = ""):
        self.base = (base_url if "://" in base_url else f"http://{base_url}").rstrip("/")
        self.timeout = timeout
        self.edge_token = edge_token
        self.session = requests.Session()
        self.session.headers["Accept-Encoding"] = "identity"  # blobs are not compressible; reflector.go sends raw

    def __enter__(self) -> HttpBlobClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def get(self, hash_: str) -> tuple[bytes, Trace]:
        """Download and verify one blob."""
        check_hash(hash_)
        started = time.monotonic_ns()
        params = {"hash": hash_}
        if self.edge_token:
            params["edge_token"] = self.edge_token
        resp = self._request("GET", params)
        via = resp.headers.get("Via")
        try:
            trace = Trace.from_json(via) if via else Trace()
        except ValueError as exc:
            raise ProtocolError(f"{self.base}: invalid Via header: {exc}") from None
        if resp.status_code == 404:
            raise BlobNotFound(trace=trace.stack("http", started))
        if resp.status_code != 200:
            raise self._status_error(resp)
        data = resp.content
        metrics.HTTP_IN_BYTES.inc(len(data))
        if not 0 < len(data) <= MAX_BLOB_SIZE or blob_hash(data) != hash_:
            raise HashMismatch(f"blob {hash_[:8]} from {self.base}: received {len(data)} bytes that do not match "
                               "its hash")
        return data, trace.stack("http", started)

    def has(self, hash_: str) -> bool:
        check_hash(hash_)
        resp = self._request("HEAD", {"hash": hash_})
        if resp.status_code in (200, 204):
            return True
        if resp.status_code == 404:
            return False
        raise self._status_error(resp)

    def _request(self, method: str, params: dict) -> requests.Response:
        try:
            return self.session.request(method, f"{self.base}/blob", params=params, timeout=self.timeout)
        except requests.Timeout:
            raise TimeoutError(f"i/o timeout: no answer from {self.base} within {self.timeout:g}s") from None
        except requests.ConnectionError as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, urllib3.exceptions.ProtocolError):  # connected; the answer was not HTTP
                detail = reason.args[1] if len(reason.args) > 1 else reason
                raise NotHttp(f"{self.base} did not answer in HTTP: {_one_line(detail)}") from None
            reason = getattr(reason, "reason", reason)  # urllib3 wraps the socket error
            raise ConnectFailed(f"cannot connect to {self.base}: {_one_line(reason)}") from None
        except requests.RequestException as exc:
            raise OriginError(f"{self.base}: {_one_line(exc)}") from None

    @staticmethod
    def _status_error(resp: requests.Response) -> OriginError:
        return OriginError(f"upstream error. Status code: {resp.status_code} ({_one_line(resp.text[:200])})")


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
