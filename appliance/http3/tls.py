"""The HTTP/3 server's certificate: the configured one, or a self-signed one kept in <state_dir>/http3/.

reflector.go made a fresh RSA-1024 certificate at every start; here an EC P-256 certificate is made at
first start and reused, so its fingerprint is stable across restarts. Both files are written to temp
names, fsynced and renamed into place (the key with mode 0600), and a pair that does not load or does
not match (e.g. a crash between the two renames) is replaced.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.trace import hostname

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
VALIDITY_DAYS = 3650


class CertificateError(Exception):
    """The certificate or key cannot be used; one line for the operator."""


@dataclass
class ServerCertificate:
    certificate: x509.Certificate
    private_key: object
    source: str  # where it came from, for the log

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()


def load_configured(cert_path: str, key_path: str = "") -> ServerCertificate:
    """A configured PEM certificate and key (the key may also sit in the certificate file)."""
    cert_pem = _read(cert_path, "http3_cert")
    key_pem = _read(key_path, "http3_key") if key_path else cert_pem
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise CertificateError(f"http3_cert {cert_path}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        where = key_path or f"{cert_path} (no http3_key given)"
        raise CertificateError(f"http3_key {where}: not an unencrypted PEM private key") from None
    if not _matches(certificate, key):
        raise CertificateError(f"http3_cert {cert_path} and its key do not belong together")
    return ServerCertificate(certificate, key, cert_path)


def load_or_create(directory: str) -> ServerCertificate:
    """The self-signed certificate in `directory`, made (atomically) when missing, broken or expired."""
    cert_path, key_path = os.path.join(directory, CERT_NAME), os.path.join(directory, KEY_NAME)
    existing = _load_existing(cert_path, key_path)
    if existing is not None:
        return existing
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _self_signed(key)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        _write_atomically(key_path, key_pem, 0o600)
        _write_atomically(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise CertificateError(f"cannot write the HTTP/3 certificate into {directory}: "
                               f"{exc.strerror or exc}") from None
    return ServerCertificate(certificate, key, f"{cert_path} (new self-signed)")


def _load_existing(cert_path: str, key_path: str) -> ServerCertificate | None:
    try:
        with open(cert_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    now = datetime.datetime.now(datetime.UTC)
    if not _matches(certificate, key) or certificate.not_valid_after_utc <= now:
        return None
    return ServerCertificate(certificate, key, cert_path)


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reflector-appliance")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    host = hostname()
    if host not in ("unknown", "localhost"):
        alt_names.insert(0, x509.DNSName(host))
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def _matches(certificate: x509.Certificate, key) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        return certificate.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    except (AttributeError, ValueError):
        return False


def _read(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CertificateError(f"{setting} {path}: {exc.strerror or exc}") from None


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
