"""LBRY's blocklist source against a local HTTP server (the outpoint list) and local wallet servers."""
import json
import logging
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fake_wallet_server import FakeWalletServer, claim_transaction, name_output, payout, update_output

from appliance import config as cfg
from appliance.lbry.blocklist import LbryBlocklistError, LbryBlocklistSource, parse_outpoint
from appliance.lbry.claims import encode_value


class ApiServer:
    """Serves `self.status` and `self.body` (bytes or a JSON-able object) to every GET."""

    def __init__(self):
        self.status, self.body, self.delay = 200, {"success": True, "error": None, "data": {"outpoints": []}}, 0.0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                time.sleep(api.delay)
                body = api.body if isinstance(api.body, bytes) else json.dumps(api.body).encode()
                self.send_response(api.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file/list_blocked"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def outpoints(self, items):
        self.body = {"success": True, "error": None, "data": {"outpoints": items}}

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api():
    server = ApiServer()
    yield server
    server.stop()


@pytest.fixture
def wallet():
    with FakeWalletServer() as server:
        yield server


def stream(sd: bytes) -> bytes:
    return encode_value({"stream": {"source": {"sd_hash": sd}}}, signing_channel_id="cd" * 20, signature=bytes(64))


def populate(wallet, count=3):
    """Blocked outpoints of several kinds on `wallet`; returns (outpoints, expected sd hashes)."""
    sds = [os.urandom(48) for _ in range(count)]
    outpoints = []
    for i, sd in enumerate(sds):
        txid = wallet.add_transaction(claim_transaction(payout(), name_output(f"s{i}", stream(sd))))
        outpoints.append(f"{txid}:1")
    update_sd = os.urandom(48)
    txid = wallet.add_transaction(claim_transaction(update_output("u", os.urandom(20), stream(update_sd))))
    outpoints.append(f"{txid.upper()}:0")  # hex case does not matter
    channel = encode_value({"channel": {"public_key": os.urandom(33)}})
    repost = encode_value({"repost": {"claim_hash": os.urandom(20)}})
    txid = wallet.add_transaction(claim_transaction(name_output("@c", channel), name_output("r", repost)))
    outpoints += [f"{txid}:0", f"{txid}:1"]  # a channel and a repost: no sd hash, nothing blocked
    return outpoints, {sd.hex() for sd in sds} | {update_sd.hex()}


def test_blocked_streams_sd_hashes(api, wallet, caplog):
    outpoints, expected = populate(wallet)
    missing_tx = "ee" * 32
    api.outpoints(outpoints + [outpoints[0], f"{missing_tx}:0", f"{outpoints[0][:64]}:7", "nonsense", "ab:cd",
                               f"{missing_tx}:x"])
    source = LbryBlocklistSource(api.url, [wallet.address], request_timeout=5)
    with caplog.at_level(logging.INFO, logger="blocklist"):
        assert source.fetch() == expected
    text = caplog.text
    assert f"blocklist: {missing_tx}:0: 2: daemon error: No such mempool" in text
    assert f"{outpoints[0][:64]}:7: nout not found" in text
    assert "nonsense: invalid outpoint format" in text and f"{missing_tx}:x: invalid nout" in text
    assert "" not in source.fetch()  # reflector.go blocked the empty hash for non-stream claims
    # Each distinct transaction (5 with claims, 1 missing) is fetched once per refresh.
    assert wallet.methods().count("blockchain.transaction.get") == 2 * 6


def test_from_config_and_empty_list(api, wallet):
    config = cfg.resolve({"blocklist_url": api.url, "wallet_servers": [wallet.address], "wallet_timeout": 2})
    source = LbryBlocklistSource.from_config(config)
    assert (source.api_url, source.wallet_servers, source.request_timeout) == (api.url, [wallet.address], 2.0)
    assert source.fetch() == set()
    assert wallet.requests == []  # nothing to look up: no wallet connection at all


@pytest.mark.parametrize("status,body,message", [
    (500, b"oops", "list_blocked API call: HTTP 500"),
    (200, b"<html>", "list_blocked API call: the answer is not JSON"),
    (200, {"success": False, "error": "rate limited", "data": None}, "list_blocked API call: rate limited"),
    (200, {"success": True, "data": {}}, "no data.outpoints list"),
    (200, [1, 2], "not a JSON object"),
])
def test_api_failures_fail_the_refresh(api, wallet, status, body, message):
    api.status, api.body = status, body
    with pytest.raises(LbryBlocklistError, match=message):
        LbryBlocklistSource(api.url, [wallet.address]).fetch()


def test_api_timeout(api, wallet):
    api.delay = 3
    with pytest.raises(LbryBlocklistError, match="list_blocked API call: .*timed out"):
        LbryBlocklistSource(api.url, [wallet.address], api_timeout=0.5).fetch()


@pytest.mark.parametrize("mode,message", [("silent", "timeout"), ("garbage", "invalid reply (not JSON)")])
def test_wallet_server_that_never_answers_or_answers_garbage(api, mode, message):
    with FakeWalletServer(mode) as bad:
        api.outpoints([f"{'ab' * 32}:0"])
        started = time.monotonic()
        with pytest.raises(LbryBlocklistError, match=re.escape(message)) as info:
            LbryBlocklistSource(api.url, [bad.address], connect_timeout=0.5, request_timeout=0.5).fetch()
        assert time.monotonic() - started < 10  # prompt: bounded by the connect timeout
    assert "\n" not in str(info.value)


def test_a_server_lost_mid_refresh_is_replaced_and_nothing_is_half_done(api, wallet, monkeypatch):
    outpoints, expected = populate(wallet)
    api.outpoints(outpoints)
    # Keep the configured order, so the server that stalls after the version probe is the one tried first.
    monkeypatch.setattr("appliance.lbry.wallet.client.random.shuffle", lambda items: None)
    with FakeWalletServer("version-only") as stalls:
        source = LbryBlocklistSource(api.url, [stalls.address, wallet.address], request_timeout=0.5)
        assert source.fetch() == expected
        assert "blockchain.transaction.get" in stalls.methods()


def test_refresh_deadline(api):
    with FakeWalletServer("version-only") as stalls:
        api.outpoints([f"{'ab' * 32}:0"])
        with pytest.raises(LbryBlocklistError, match="unfinished after 1 s|keep failing"):
            LbryBlocklistSource(api.url, [stalls.address], request_timeout=5, refresh_timeout=1).fetch()


def test_parse_outpoint():
    assert parse_outpoint("AB" * 32 + ":3") == ("ab" * 32, 3)
    for bad, message in [("x", "format"), ("ab" * 32 + ":-1", "nout"), (7, "format"), ("ab" * 32 + ":1:2", "format")]:
        with pytest.raises(ValueError, match=message):
            parse_outpoint(bad)
