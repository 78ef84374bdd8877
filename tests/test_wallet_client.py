"""The wallet-server client against real local TCP servers speaking newline-delimited JSON-RPC."""
import os
import socket
import time

import pytest
from fake_wallet_server import (
    FakeWalletServer,
    claim_transaction,
    name_output,
    payout,
    support_output,
    update_output,
)

from appliance.lbry.claims import encode_value
from appliance.lbry.wallet import (
    ClaimLookupError,
    ServerError,
    TransportError,
    WalletClient,
    WalletError,
    WalletTimeout,
)
from appliance.lbry.wallet.client import CLIENT_NAME, error_text
from appliance.lbry.wallet.outputs import encode_outputs

SD = os.urandom(48)


def stream_value(sd: bytes = SD, title: str = "a stream") -> bytes:
    return encode_value({"stream": {"source": {"sd_hash": sd}}, "title": title},
                        signing_channel_id="ab" * 20, signature=os.urandom(64))


def closed_port_address() -> str:
    """An address on loopback where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def server():
    with FakeWalletServer() as srv:
        yield srv


def test_resolve_then_claim_from_the_transaction(server):
    tx = claim_transaction(support_output("x", os.urandom(20)), name_output("movie", stream_value()))
    txid = server.add_transaction(tx)
    server.add_url("lbry://movie", txid, 1)
    with WalletClient([server.address], request_timeout=5) as client:
        output = client.resolve("lbry://movie")
        assert output["tx_hash"][::-1].hex() == txid and output["nout"] == 1
        claim = client.get_claim(txid, output["nout"])
    assert claim.sd_hash == SD.hex() and claim.signing_channel_id == "ab" * 20
    # The probe came first, with our name; every reply was preceded by a notification the client skipped.
    assert server.requests[0] == {"jsonrpc": "2.0", "id": 0, "method": "server.version", "params": [CLIENT_NAME]}
    assert server.methods() == ["server.version", "blockchain.claimtrie.resolve", "blockchain.transaction.get"]
    assert [r["id"] for r in server.requests] == [0, 1, 2]


def test_claim_update_output(server):
    value = stream_value(title="v2")
    txid = server.add_transaction(claim_transaction(payout(), update_output("movie", os.urandom(20), value)))
    with WalletClient([server.address]) as client:
        assert client.get_claim(txid, 1).claim["title"] == "v2"


def test_outpoint_errors(server):
    txid = server.add_transaction(claim_transaction(support_output("x", os.urandom(20)), payout()))
    with WalletClient([server.address]) as client:
        with pytest.raises(ClaimLookupError, match="^nout not found$"):
            client.get_claim(txid, 2)
        with pytest.raises(ClaimLookupError, match="^no claim found in output$"):
            client.get_claim(txid, 0)
        with pytest.raises(ClaimLookupError, match="^no claim found in output$"):
            client.get_claim(txid, 1)
        with pytest.raises(ServerError, match="^2: daemon error: No such mempool"):
            client.get_claim("00" * 32, 0)
        server.results[("blockchain.transaction.get", "11" * 32)] = "0100zz"
        with pytest.raises(ClaimLookupError, match="not hex"):
            client.get_claim("11" * 32, 0)
        # The connection survives per-request errors.
        assert client.server_version() == ["FakeHub 0.1", "0.107.0"]


def test_resolve_errors(server):
    with WalletClient([server.address]) as client:
        with pytest.raises(ServerError, match=r"^NOT_FOUND: Could not find claim at lbry://nope\.$"):
            client.resolve("lbry://nope")
        server.results[("blockchain.claimtrie.resolve", "lbry://two")] = encode_outputs(
            {"txos": [{"nout": 0}, {"nout": 1}]})
        with pytest.raises(ServerError, match="^expected 1 output, got 2$"):
            client.resolve("lbry://two")
        server.results[("blockchain.claimtrie.resolve", "lbry://junk")] = "@@not base64@@"
        with pytest.raises(ServerError, match="not a base64 Outputs message"):
            client.resolve("lbry://junk")
        with pytest.raises(ServerError, match='^-32601: unknown method "no.such"$'):
            client.request("no.such", [])


def test_nested_error_form():
    with FakeWalletServer(nested_errors=True) as srv, WalletClient([srv.address]) as client:
        with pytest.raises(ServerError, match="^2: daemon error: No such mempool"):
            client.get_transaction("00" * 32)
    assert error_text({"code": 5, "message": {"code": 6, "message": "inner"}}) == "5: inner"
    assert error_text("plain") == "plain"


def test_failover_skips_dead_silent_and_garbage_servers(server):
    with FakeWalletServer("silent") as silent, FakeWalletServer("garbage") as garbage:
        servers = [closed_port_address(), silent.address, garbage.address, server.address]
        for _ in range(3):  # the order is shuffled; every order ends on the good server
            client = WalletClient(servers, connect_timeout=0.5)
            assert client.connect() == server.address
            assert client.get_transaction(server.add_transaction(claim_transaction(payout())))
            client.close()


def test_no_server_answers_fails_promptly_naming_each():
    with FakeWalletServer("silent") as silent, FakeWalletServer("garbage") as garbage:
        dead = closed_port_address()
        started = time.monotonic()
        with pytest.raises(WalletError) as info:
            WalletClient([dead, silent.address, garbage.address], connect_timeout=0.5).connect()
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert message.startswith("failed to connect to a wallet server: ") and "\n" not in message
    assert f"{silent.address}: timeout" in message
    assert f"{garbage.address}: invalid reply (not JSON)" in message
    assert dead in message
    assert elapsed < 10  # bounded by the connect timeouts, not hanging on the silent server


def test_request_timeout_on_a_server_that_stops_answering():
    with FakeWalletServer("version-only") as srv:
        client = WalletClient([srv.address], request_timeout=0.5)
        client.connect()
        with pytest.raises(WalletTimeout, match="timeout"):
            client.get_transaction("00" * 32)
        client.close()


def test_server_closing_the_connection_is_a_transport_error(server):
    client = WalletClient([server.address])
    client.connect()
    server.stop()
    with pytest.raises(TransportError):
        client.get_transaction("00" * 32)
    with pytest.raises(TransportError):  # and stays unusable, with the same reason
        client.get_transaction("00" * 32)


def test_pipelined_claims_answered_out_of_order():
    # The server holds its replies until 20 requests are waiting and then answers them in reverse order:
    # a client that waited for each reply before sending the next request would time out here.
    with FakeWalletServer(hold_until=20) as srv:
        outpoints, expected = [], {}
        for i in range(20):
            sd = os.urandom(48)
            txid = srv.add_transaction(claim_transaction(payout(), name_output(f"n{i}", stream_value(sd))))
            outpoints.append((txid, 1))
            expected[(txid, 1)] = sd.hex()
        outpoints.append((outpoints[0][0], 0))  # same transaction, an output without a claim
        client = WalletClient([srv.address], request_timeout=1.5)
        client.connect()
        claims = client.get_claims(outpoints, window=32)
        client.close()
    assert {k: v.sd_hash for k, v in claims.items() if k[1] == 1} == expected
    assert isinstance(claims[(outpoints[0][0], 0)], ClaimLookupError)
    assert srv.methods().count("blockchain.transaction.get") == 20  # each transaction fetched once


def test_batch_deadline():
    with FakeWalletServer("version-only") as srv:
        client = WalletClient([srv.address], request_timeout=30)
        client.connect()
        with pytest.raises(WalletTimeout, match="unanswered at the deadline"):
            client.request_many("blockchain.transaction.get", [["00" * 32]] * 5, deadline=time.monotonic() + 0.5)
        client.close()


def test_bad_server_addresses():
    with pytest.raises(WalletError, match="no wallet servers"):
        WalletClient([])
    with pytest.raises(WalletError, match="expected HOST:PORT"):
        WalletClient(["spv1.lbry.com"])
