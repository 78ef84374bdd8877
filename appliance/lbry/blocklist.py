"""LBRY's blocklist: the outpoints LBRY's API lists as blocked, each resolved to the sd hash of the stream
claimed there, through LBRY's wallet servers.

Unlike reflector.go, a claim that is not a stream (a channel, a repost...) blocks nothing instead of the
empty hash, and the refresh is all or nothing: fetch() either returns the whole set or raises, so a
half-finished lookup never unblocks anything. Outpoints whose claim cannot be read are logged and skipped.
"""
from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import requests

from appliance.blob import check_hash
from appliance.lbry.wallet import TransportError, WalletClient, WalletError

log = logging.getLogger("blocklist")

_TXID = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_API_BODY = 64 * 1024 * 1024
CHUNK = 500  # outpoints per pipelined batch; a batch lost with its connection is retried on another server


class LbryBlocklistError(Exception):
    """The blocked-outpoint list could not be fetched or resolved; one-line message."""


def parse_outpoint(text: Any) -> tuple[str, int]:
    """"txid:nout" -> (lowercase txid, nout); ValueError with reflector.go's wording."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 2 or not _TXID.match(parts[0]):
        raise ValueError("invalid outpoint format")
    try:
        nout = int(parts[1])
    except ValueError:
        raise ValueError("invalid nout") from None
    if not 0 <= nout < 2**32:
        raise ValueError("invalid nout")
    return parts[0].lower(), nout


class LbryBlocklistSource:
    """fetch() -> the set of blocked sd hashes (hex), from `api_url` and the wallet servers."""

    name = "lbry"

    def __init__(self, api_url: str, wallet_servers: list[str], *, api_timeout: float = 30.0,
                 connect_timeout: float = 5.0, request_timeout: float = 10.0, refresh_timeout: float = 300.0,
                 window: int = 64):
        self.api_url = api_url
        self.wallet_servers = list(wallet_servers)
        self.api_timeout = api_timeout
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.refresh_timeout = refresh_timeout  # the whole refresh, however many outpoints
        self.window = window  # requests in flight on the wallet connection

    @classmethod
    def from_config(cls, config) -> LbryBlocklistSource:
        """The source as configured: blocklist_url, wallet_servers, wallet_timeout, blocklist_timeout."""
        return cls(config.blocklist_url, config.wallet_servers, connect_timeout=config.wallet_timeout,
                   request_timeout=config.wallet_timeout, refresh_timeout=config.blocklist_timeout)

    def fetch(self) -> set[str]:
        deadline = time.monotonic() + self.refresh_timeout
        outpoints = self.fetch_outpoints()
        if not outpoints:
            return set()
        results = self._lookup(outpoints, deadline)
        blocked: set[str] = set()
        skipped = failed = 0
        for outpoint in outpoints:
            label = f"{outpoint[0]}:{outpoint[1]}"
            result = results[outpoint]
            if isinstance(result, WalletError):
                log.warning("blocklist: %s: %s", label, result)
                failed += 1
            elif result.claim_type != "stream" or not result.sd_hash:
                log.debug("blocklist: %s: a %s claim, not a stream with an sd hash: skipped", label,
                          result.claim_type or "typeless")
                skipped += 1
            elif not check_hash(result.sd_hash):
                log.warning("blocklist: %s: the stream's sd hash %s is not a blob hash", label, result.sd_hash[:120])
                failed += 1
            else:
                blocked.add(result.sd_hash)
        log.info("LBRY blocklist: %d outpoints, %d sd hashes blocked, %d not streams, %d unreadable",
                 len(outpoints), len(blocked), skipped, failed)
        return blocked

    def fetch_outpoints(self) -> list[tuple[str, int]]:
        """GET the API's outpoint list; invalid entries are logged and skipped."""
        body = self._get_api()
        if not isinstance(body, dict):
            raise LbryBlocklistError("list_blocked API call: the answer is not a JSON object")
        if body.get("success") is not True:
            raise LbryBlocklistError(f"list_blocked API call: {body.get('error') or 'success is not true'}")
        data = body.get("data")
        raw = data.get("outpoints") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise LbryBlocklistError("list_blocked API call: the answer has no data.outpoints list")
        outpoints = []
        for item in raw:
            try:
                outpoints.append(parse_outpoint(item))
            except ValueError as exc:
                log.warning("blocklist: %s: %s", str(item)[:200], exc)
        return list(dict.fromkeys(outpoints))

    def _get_api(self) -> Any:
        try:
            with requests.get(self.api_url, timeout=self.api_timeout, stream=True,
                              headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise LbryBlocklistError(f"list_blocked API call: HTTP {response.status_code}")
                content = bytearray()
                for chunk in response.iter_content(65536):
                    content += chunk
                    if len(content) > MAX_API_BODY:
                        raise LbryBlocklistError(f"list_blocked API call: answer larger than {MAX_API_BODY} bytes")
        except requests.RequestException as exc:
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise LbryBlocklistError(f"list_blocked API call: {reason}") from None
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError):
            raise LbryBlocklistError("list_blocked API call: the answer is not JSON") from None

    def _lookup(self, outpoints: list[tuple[str, int]], deadline: float) -> dict:
        """Each outpoint's claim (or per-outpoint WalletError), over one pipelined connection at a time.
        A lost connection moves to another server; too many losses or the deadline fail the refresh."""
        client = WalletClient(self.wallet_servers, connect_timeout=self.connect_timeout,
                              request_timeout=self.request_timeout)
        results: dict = {}
        losses: list[str] = []
        chunks = [outpoints[i:i + CHUNK] for i in range(0, len(outpoints), CHUNK)]
        try:
            while chunks:
                if time.monotonic() >= deadline:
                    raise LbryBlocklistError(f"blocklist refresh unfinished after {self.refresh_timeout:g} s: "
                                             f"{sum(map(len, chunks))} outpoints left")
                try:
                    if client.address is None:
                        client.connect(exclude=losses)
                    results.update(client.get_claims(chunks[0], window=self.window, deadline=deadline))
                    chunks.pop(0)
                except TransportError as exc:
                    losses.append(client.address or "")
                    client.close()
                    log.warning("blocklist: wallet server lost: %s", exc)
                    if len(losses) > len(self.wallet_servers):
                        raise LbryBlocklistError(f"blocklist: wallet servers keep failing: {exc}") from None
                except WalletError as exc:  # connect() found no server
                    raise LbryBlocklistError(f"blocklist: {exc}") from None
        finally:
            client.close()
        return results
