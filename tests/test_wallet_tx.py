"""Raw transactions and LBRY's claim output scripts."""
import hashlib
import struct

import pytest

from appliance.lbry.wallet import script as sc
from appliance.lbry.wallet.tx import Transaction, TransactionError, TxInput, TxOutput, parse_transaction, txid_of

# The Bitcoin genesis block's coinbase transaction, the best-known raw transaction there is (LBRY keeps
# Bitcoin's transaction format): one input, one 50-coin output, txid 4a5e1e4b...a33b.
GENESIS_COINBASE = (
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054"
    "696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f7574"
    "20666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f"
    "61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000"
)
GENESIS_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"


def test_published_transaction_parses():
    raw = bytes.fromhex(GENESIS_COINBASE)
    tx = parse_transaction(raw)
    assert (tx.version, tx.locktime, len(tx.inputs), len(tx.outputs)) == (1, 0, 1, 1)
    assert tx.inputs[0].prev_txid == "00" * 32 and tx.inputs[0].prev_nout == 0xFFFFFFFF
    assert tx.outputs[0].value == 50 * 100_000_000 and tx.outputs[0].script[-1] == sc.OP_CHECKSIG
    assert txid_of(raw) == GENESIS_TXID and tx.serialize() == raw


def test_round_trip_with_many_outputs_and_big_scripts():
    tx = Transaction(2, [TxInput("11" * 32, 3, b"\x01" * 300, 7)],
                     [TxOutput(i, bytes([i % 256]) * (i * 100)) for i in range(300)], 99)
    raw = tx.serialize()
    assert raw[4 + 1 + 32 + 4:][:3] == b"\xfd\x2c\x01"  # a 300-byte script takes a 3-byte compact size
    back = parse_transaction(raw)
    assert back == tx and back.txid == hashlib.sha256(hashlib.sha256(raw).digest()).digest()[::-1].hex()


@pytest.mark.parametrize("raw,message", [
    (bytes.fromhex(GENESIS_COINBASE)[:-1], "truncated"),
    (bytes.fromhex(GENESIS_COINBASE) + b"\x00", "1 bytes after the end"),
    (struct.pack("<i", 2) + b"\x00\x01" + bytes(60), "segwit"),
    (struct.pack("<i", 1) + b"\xfe\xff\xff\xff\x7f", "more than its size allows"),
    (b"\x01\x00", "truncated"),
])
def test_bad_transactions_are_clear_errors(raw, message):
    with pytest.raises(TransactionError, match=message):
        parse_transaction(raw)


PAYOUT = sc.pay_to_pubkey_hash(b"\x22" * 20)


@pytest.mark.parametrize("size", [0, 1, 75, 76, 255, 256, 70000])
def test_claim_name_script_with_every_push_size(size):
    value = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    script = sc.claim_name_script(b"name", value, PAYOUT)
    parsed = sc.parse_claim_script(script)
    assert (parsed.kind, parsed.name, parsed.claim_hash, parsed.value, parsed.payout) == \
        ("name", b"name", None, value, PAYOUT)
    assert sc.claim_value(script) == value


def test_non_minimal_pushdata4_is_read():
    value = b"\x00claim"
    script = (bytes([sc.OP_CLAIM_NAME, sc.OP_PUSHDATA4]) + struct.pack("<I", 3) + b"abc"
              + bytes([sc.OP_PUSHDATA2]) + struct.pack("<H", len(value)) + value
              + bytes([sc.OP_2DROP, sc.OP_DROP]) + PAYOUT)
    assert sc.claim_value(script) == value


def test_update_and_support_scripts():
    claim_hash = b"\x33" * 20
    update = sc.update_claim_script(b"n", claim_hash, b"\x00v", PAYOUT)
    parsed = sc.parse_claim_script(update)
    assert (parsed.kind, parsed.claim_hash, parsed.value, parsed.payout) == ("update", claim_hash, b"\x00v", PAYOUT)
    assert sc.claim_value(update) == b"\x00v"
    support = sc.support_claim_script(b"n", claim_hash, PAYOUT)
    assert sc.parse_claim_script(support).kind == "support"
    with pytest.raises(sc.NoClaim, match="^no claim found in output$"):
        sc.claim_value(support)


@pytest.mark.parametrize("script", [
    PAYOUT,  # a plain payment
    b"",
    bytes([sc.OP_CLAIM_NAME, 0x05, 0x61]),  # push runs past the end
    bytes([sc.OP_CLAIM_NAME, 0x01, 0x61, 0x01, 0x62, sc.OP_DROP, sc.OP_DROP]) + PAYOUT,  # wrong drops
    bytes([sc.OP_UPDATE_CLAIM, 0x01, 0x61, 0x01, 0x62, sc.OP_2DROP, sc.OP_DROP]),  # too few pushes
])
def test_outputs_without_a_claim(script):
    with pytest.raises(sc.NoClaim, match="no claim found in output"):
        sc.claim_value(script)
