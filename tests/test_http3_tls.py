"""The HTTP/3 certificate: self-signed in the state directory (made once, atomically, key 0600) or configured."""
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.http3.tls import CERT_NAME, KEY_NAME, CertificateError, load_configured, load_or_create


def test_self_signed_is_made_once_with_a_private_key_file_and_reused(tmp_path):
    directory = tmp_path / "state" / "http3"
    first = load_or_create(str(directory))
    assert stat.S_IMODE(os.stat(directory / KEY_NAME).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert sorted(os.listdir(directory)) == [CERT_NAME, KEY_NAME]  # no temp files left behind
    second = load_or_create(str(directory))
    assert second.fingerprint == first.fingerprint
    assert "new" not in second.source


def test_a_broken_or_mismatched_pair_is_replaced(tmp_path):
    directory = tmp_path / "http3"
    first = load_or_create(str(directory))
    other_key = ec.generate_private_key(ec.SECP256R1())
    (directory / KEY_NAME).write_bytes(other_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    replaced = load_or_create(str(directory))
    assert replaced.fingerprint != first.fingerprint
    (directory / CERT_NAME).write_bytes(b"garbage")
    assert load_or_create(str(directory)).fingerprint != replaced.fingerprint


def test_unwritable_state_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CertificateError) as info:
        load_or_create(str(blocker / "http3"))
    assert "cannot write the HTTP/3 certificate" in str(info.value) and "\n" not in str(info.value)


def test_configured_certificate_and_key(tmp_path):
    made = load_or_create(str(tmp_path / "made"))
    cert, key = tmp_path / "made" / CERT_NAME, tmp_path / "made" / KEY_NAME
    assert load_configured(str(cert), str(key)).fingerprint == made.fingerprint
    combined = tmp_path / "combined.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    assert load_configured(str(combined)).fingerprint == made.fingerprint  # key inside the certificate file


@pytest.mark.parametrize("case", ["missing cert", "missing key", "not a cert", "not a key", "mismatch", "no key"])
def test_configured_certificate_errors_are_one_line(tmp_path, case):
    load_or_create(str(tmp_path / "a"))
    load_or_create(str(tmp_path / "b"))
    cert, key = str(tmp_path / "a" / CERT_NAME), str(tmp_path / "a" / KEY_NAME)
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    args = {"missing cert": (str(tmp_path / "nope.pem"), key), "missing key": (cert, str(tmp_path / "nope.pem")),
            "not a cert": (str(junk), key), "not a key": (cert, str(junk)),
            "mismatch": (cert, str(tmp_path / "b" / KEY_NAME)), "no key": (cert, "")}[case]
    with pytest.raises(CertificateError) as info:
        load_configured(*args)
    message = str(info.value)
    assert "\n" not in message and ("http3_cert" in message or "http3_key" in message)
