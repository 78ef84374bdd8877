"""`prism decode` and `prism resolve` as real subprocesses (resolve against a local wallet server)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from fake_wallet_server import FakeWalletServer, claim_transaction, name_output, payout, support_output
from test_claims import UNSIGNED_STREAM, UNSIGNED_STREAM_SD, V1_SIGNED_STREAM, V1_SIGNED_STREAM_SD

from appliance.lbry.claims import encode_value

REPO = Path(__file__).resolve().parent.parent
PRISM = [sys.executable, "-m", "appliance.cli.prism"]


def prism(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(PRISM + list(args) + ["--conf", "none"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def split_output(stdout: str) -> tuple[dict, str | None]:
    """The JSON document and the `SD hash as hex:` line after it (None when absent)."""
    lines = stdout.rstrip("\n").split("\n")
    if lines[-1].startswith("SD hash as hex: "):
        return json.loads("\n".join(lines[:-1])), lines[-1].removeprefix("SD hash as hex: ")
    return json.loads(stdout), None


def test_decode_stream_prints_indented_json_and_sd_hash():
    out = prism("decode", UNSIGNED_STREAM)
    assert out.returncode == 0, out.stderr
    doc, sd = split_output(out.stdout)
    assert sd == UNSIGNED_STREAM_SD and doc["stream"]["source"]["sdHash"] == UNSIGNED_STREAM_SD
    assert doc["title"] == "TUM PE MERNE LAG"
    assert out.stdout.startswith('{\n  "stream": {\n    "source": {\n')  # two-space indentation


def test_decode_legacy_signed_stream():
    out = prism("decode", V1_SIGNED_STREAM)
    assert out.returncode == 0, out.stderr
    doc, sd = split_output(out.stdout)
    assert sd == V1_SIGNED_STREAM_SD and doc["signingChannelId"] == "feb61536c007cdf4faeeaab4876cb397feaf6b51"
    assert "❤️" in out.stdout  # UTF-8 text is printed as such


def test_decode_channel_and_repost_have_no_sd_line():
    key = os.urandom(33)
    out = prism("decode", encode_value({"channel": {"public_key": key}, "title": "chan"}).hex())
    assert out.returncode == 0, out.stderr
    doc, sd = split_output(out.stdout)
    assert sd is None and doc == {"channel": {"publicKey": key.hex()}, "title": "chan"}

    signature = os.urandom(64)
    reposted = "12" * 20
    value = encode_value({"repost": {"claim_hash": bytes.fromhex(reposted)[::-1]}}, signing_channel_id="34" * 20,
                         signature=signature)
    out = prism("decode", value.hex())
    assert out.returncode == 0, out.stderr
    doc, sd = split_output(out.stdout)
    assert sd is None
    assert doc == {"repost": {"claimId": reposted}, "signingChannelId": "34" * 20, "signature": signature.hex()}


def test_decode_errors():
    out = prism("decode", "xyz")
    assert (out.returncode, out.stdout, out.stderr) == (1, "", "prism: the claim value is not hex\n")
    out = prism("decode", "0a0b")
    assert out.returncode == 1 and out.stderr.startswith("prism: invalid claim value: first byte 0x0a")
    assert out.stderr.count("\n") == 1
    assert prism("decode").returncode == 2


def test_resolve_prints_the_claim():
    sd = os.urandom(48)
    with FakeWalletServer() as wallet:
        value = encode_value({"stream": {"source": {"sd_hash": sd, "name": "f.mp4"}}, "title": "found"},
                             signing_channel_id="ef" * 20, signature=os.urandom(64))
        txid = wallet.add_transaction(claim_transaction(payout(), payout(), name_output("found", value)))
        wallet.add_url("lbry://found#1", txid, 2)
        out = prism("resolve", wallet.address, "lbry://found#1")
        assert out.returncode == 0, out.stderr
        doc, printed_sd = split_output(out.stdout)
        assert printed_sd == sd.hex() and doc["title"] == "found" and doc["signingChannelId"] == "ef" * 20

        out = prism("resolve", wallet.address, "lbry://missing")
        assert (out.returncode, out.stdout) == (1, "")
        assert out.stderr.strip().splitlines()[-1] == "prism: NOT_FOUND: Could not find claim at lbry://missing."

        support = wallet.add_transaction(claim_transaction(support_output("s", os.urandom(20))))
        wallet.add_url("lbry://support", support, 0)
        out = prism("resolve", wallet.address, "lbry://support")
        assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == "prism: no claim found in output"


def test_resolve_against_servers_that_fail():
    with FakeWalletServer("silent") as silent, FakeWalletServer("garbage") as garbage:
        out = prism("resolve", silent.address, "lbry://x", "--wallet-timeout", "0.5")
        assert out.returncode == 1
        assert out.stderr.strip().splitlines()[-1] == \
            f"prism: failed to connect to a wallet server: {silent.address}: timeout"
        out = prism("resolve", garbage.address, "lbry://x", "--wallet-timeout=0.5")
        assert out.returncode == 1 and "invalid reply (not JSON)" in out.stderr
        assert "Traceback" not in out.stderr
    assert prism("resolve", "no-port", "lbry://x").returncode == 2
