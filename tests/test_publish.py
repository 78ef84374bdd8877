"""`prism publish` against a scripted lbrycrd (real HTTP, basic auth, JSON-RPC 1.0) and a real appliance."""
import hashlib
import json
import os

import pytest

from appliance.lbry.address import decode_address, payout_script, script_address
from appliance.lbry.claims import decode_value, encode_value
from appliance.lbry.publish import Coin, InsufficientFunds, PublishError, check_name, claim_id, select_coins
from appliance.lbry.wallet.script import claim_name_script, parse_claim_script, pay_to_pubkey_hash
from appliance.lbry.wallet.tx import parse_transaction_hex
from appliance.stream import parse_sd_blob
from tests.appliance_process import appliance_fixture, free_ports  # noqa: F401
from tests.fake_lbrycrd import FakeLbrycrd, utxo
from tests.test_cli_client_commands import assert_one_line_error, prism

# lbry-sdk, tests/unit/wallet/test_script.py, TestPayClaimNamePubkeyHash: the claim script of the name
# "cats" with this value, paid to this pubkey hash.
SDK_CLAIM = bytes.fromhex(
    "080110011a7808011230080410011a084d616361726f6e6922002a003214416c6c207269676874732072657365727665642e38004a00"
    "52005a001a42080110011a30add80aaf02559ba09853636a0658c42b727cb5bb4ba8acedb4b7fe656065a47a31878dbf9912135ddb9e"
    "13806cc1479d220a696d6167652f6a7065672a5c080110031a404180cc0fa4d3839ee29cca866baed25fafb43fca1eb3b608ee889d35"
    "1d3573d042c7b83e2e643db0d8e062a04e6e9ae6b90540a2f95fe28638d0f18af4361a1c2214f73de93f4299fb32c32f949e02198a8e"
    "91101abd")
SDK_PUBKEY_HASH = bytes.fromhex("be16e4b0f9bd8f6d47d02b3a887049c36d3b84cb")
SDK_SCRIPT = bytes.fromhex(
    "b504636174734cdc080110011a7808011230080410011a084d616361726f6e6922002a003214416c6c207269676874732072657365"
    "727665642e38004a0052005a001a42080110011a30add80aaf02559ba09853636a0658c42b727cb5bb4ba8acedb4b7fe656065a47a"
    "31878dbf9912135ddb9e13806cc1479d220a696d6167652f6a7065672a5c080110031a404180cc0fa4d3839ee29cca866baed25faf"
    "b43fca1eb3b608ee889d351d3573d042c7b83e2e643db0d8e062a04e6e9ae6b90540a2f95fe28638d0f18af4361a1c2214f73de93f"
    "4299fb32c32f949e02198a8e91101abd6d7576a914be16e4b0f9bd8f6d47d02b3a887049c36d3b84cb88ac")


def test_claim_script_matches_the_sdk_vector():
    assert claim_name_script(b"cats", SDK_CLAIM, pay_to_pubkey_hash(SDK_PUBKEY_HASH)) == SDK_SCRIPT
    parsed = parse_claim_script(SDK_SCRIPT)
    assert (parsed.kind, parsed.name, parsed.value) == ("name", b"cats", SDK_CLAIM)


def test_addresses_round_trip_and_make_payout_scripts():
    address = script_address(pay_to_pubkey_hash(SDK_PUBKEY_HASH))
    assert address.startswith("b") and decode_address(address) == (0x55, SDK_PUBKEY_HASH)
    assert payout_script(address) == pay_to_pubkey_hash(SDK_PUBKEY_HASH)
    with pytest.raises(ValueError, match="checksum"):
        decode_address(address[:-1] + ("1" if address[-1] != "1" else "2"))


def test_coin_selection_prefers_the_smallest_single_coin_then_several():
    coins = [Coin("a" * 64, 0, 5_000_000), Coin("b" * 64, 0, 1_500_000), Coin("c" * 64, 1, 900_000)]
    assert select_coins(coins, 1_020_000) == [coins[1]]
    assert select_coins(coins, 6_000_000) == [coins[0], coins[1]]
    with pytest.raises(InsufficientFunds, match="7400000 deweys"):
        select_coins(coins, 8_000_000)


def test_claim_names_lbry_cannot_hold_are_refused():
    assert check_name("café-2") == "café-2".encode()
    for bad in ("", "a b", "x#y", "a/b", "n" * 256):
        with pytest.raises(PublishError):
            check_name(bad)


def test_claim_ids_of_published_claims():
    # Two claims on LBRY's chain (block 289582), each output 0 of its transaction, with the ids LBRY shows.
    assert claim_id("fd85da9ddac7bc070a31d8f260c6d0c8a0470ae3b192de33097f217586f1959f", 0) == \
        "3faec51985c22a0958105abe84913842cfb52f49"
    assert claim_id("76d31b7c11561ca10ce6fe479a14373770326e2b0a7f466de059aaceb984d31e", 0) == \
        "95f1a09489ef0ac3a3732063f8695fd61acd0d7e"


@pytest.fixture
def wallet():
    fake = FakeLbrycrd([utxo("big", "5.0"), utxo("fits", "0.5"), utxo("tiny", "0.001"),
                        utxo("locked", "0.03", spendable=False)])
    yield fake
    fake.close()


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "my video.mp4"
    path.write_bytes(os.urandom(3 * 1024 * 1024))
    return path


def publish(wallet, path, *extra, reflector="127.0.0.1:9"):
    return prism("publish", str(path), "--conf", "none", "--lbrycrd", wallet.url(), "--reflector", reflector, *extra)


def test_publish_reflects_then_broadcasts_the_claim(appliance, wallet, video):
    app = appliance("--workers", "1")
    result = publish(wallet, video, "--name", "my-video", "--title", "A title", "--description", "about it",
                     "--author", "me", "--tags", "one,two", "--tags", "three", "--release-time", "1700000000",
                     reflector=f"127.0.0.1:{app.ports['receiver']}")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["broadcast"] is True and out["name"] == "my-video"
    assert wallet.problems == []
    methods = wallet.methods()
    assert methods[-1] == "sendrawtransaction" and methods.count("sendrawtransaction") == 1
    # What was broadcast is what lbrycrd signed, and its txid is the one printed.
    broadcast = parse_transaction_hex(wallet.calls[-1][1][0])
    assert broadcast.txid == out["txid"] and out["claim_id"] == claim_id(out["txid"], 0)
    # Coin selection: the smallest spendable coin that covers 0.01 + 0.0002 LBC; the rest comes back as change.
    assert [(i.prev_txid, i.prev_nout) for i in broadcast.inputs] == [(utxo("fits", "0")["txid"], 0)]
    assert broadcast.outputs[0].value == 1_000_000
    assert broadcast.outputs[1].value == 50_000_000 - 1_000_000 - 20_000
    # The claim: our encoder's bytes decode to the fields given, and re-encode byte for byte.
    script = parse_claim_script(broadcast.outputs[0].script)
    assert script.name == b"my-video"
    value = decode_value(script.value)
    assert encode_value(value.claim) == script.value
    stream = value.claim["stream"]
    assert value.claim["title"] == "A title" and value.claim["description"] == "about it"
    assert value.claim["tags"] == ["one", "two", "three"]
    assert stream["author"] == "me" and stream["release_time"] == 1700000000 and "video" in stream
    source = stream["source"]
    assert (source["name"], source["size"], source["media_type"]) == ("my video.mp4", 3 * 1024 * 1024, "video/mp4")
    assert source["sd_hash"].hex() == out["sd_hash"]
    assert source["hash"] == hashlib.sha384(video.read_bytes()).digest()
    # The reflector has every blob of the stream.
    storage = app.dir / "data" / "blobs"
    sd = parse_sd_blob((storage / out["sd_hash"][:2] / out["sd_hash"]).read_bytes())
    assert all((storage / b.blob_hash[:2] / b.blob_hash).exists() for b in sd.content_blobs)
    # `prism decode` of the claim script shows what was published.
    decoded = prism("decode", broadcast.outputs[0].script.hex())
    assert decoded.returncode == 0, decoded.stderr
    assert '"title": "A title"' in decoded.stdout and "Claim name: my-video" in decoded.stdout
    assert f"SD hash as hex: {out['sd_hash']}" in decoded.stdout


def test_dry_run_broadcasts_and_reflects_nothing(appliance, wallet, video):
    app = appliance("--workers", "1")
    result = publish(wallet, video, "--name", "dry", "--dry-run", reflector=f"127.0.0.1:{app.ports['receiver']}")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["broadcast"] is False and "sendrawtransaction" not in wallet.methods()
    assert parse_transaction_hex(out["signed_hex"]).txid == out["txid"]
    assert out["transaction"]["outputs"][0]["claim_name"] == "dry"
    assert not any((app.dir / "data" / "blobs").rglob(out["sd_hash"]))


def test_missing_name_is_a_usage_error(wallet, video):
    assert_one_line_error(publish(wallet, video), code=2, contains="--name is required")
    assert wallet.calls == []


def test_unreachable_lbrycrd(video):
    port = free_ports(1)[0]
    result = prism("publish", str(video), "--conf", "none", "--name", "x", "--lbrycrd", f"http://u:p@127.0.0.1:{port}")
    assert_one_line_error(result, contains=f"cannot reach lbrycrd at http://127.0.0.1:{port}")
    assert "nothing was reflected or broadcast" in result.stderr and ":p@" not in result.stderr


def test_bad_credentials(wallet, video):
    result = prism("publish", str(video), "--conf", "none", "--name", "x", "--lbrycrd", wallet.url(password="wrong"))
    assert_one_line_error(result, contains="refused the credentials")
    assert "wrong" not in result.stderr


def test_insufficient_funds(wallet, video):
    result = publish(wallet, video, "--name", "x", "--amount", "10")
    assert_one_line_error(result, contains="insufficient funds")
    assert "signrawtransactionwithwallet" not in wallet.methods()


def test_a_rejected_transaction_says_what_was_done(appliance, video):
    wallet = FakeLbrycrd([utxo("fits", "0.5")], reject="bad-txns-inputs-missingorspent")
    try:
        app = appliance("--workers", "1")
        result = publish(wallet, video, "--name", "x", reflector=f"127.0.0.1:{app.ports['receiver']}")
        assert_one_line_error(result, contains="but the claim transaction was not broadcast")
        assert "bad-txns-inputs-missingorspent" in result.stderr and "is on 127.0.0.1:" in result.stderr
    finally:
        wallet.close()


def test_an_unreachable_reflector_broadcasts_nothing(wallet, video):
    result = publish(wallet, video, "--name", "x", reflector=f"127.0.0.1:{free_ports(1)[0]}")
    assert_one_line_error(result, contains="nothing was broadcast")
    assert "sendrawtransaction" not in wallet.methods()


def test_a_mistyped_claim_address_fails_before_anything_is_spent(wallet, video):
    result = publish(wallet, video, "--name", "x", "--claim-address", "bNotAnAddress")
    assert_one_line_error(result, contains="is not an LBRY address")
    assert "signrawtransactionwithwallet" not in wallet.methods()
