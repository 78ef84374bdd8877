"""QUIC settings for the HTTP/3 server and client, close to reflector.go's (spec §3d, §11).

The QUIC stack is qh3: aioquic's API over a native (Rust) packet core, with native TLS and packet
protection. aioquic did all of that in Python and topped out near 30 MB/s per process.

reflector.go: receive windows of 500 MiB, max idle timeout 20 s, handshake idle timeout 4 s. Here:
- the client (which receives blobs) gets the large connection window and a stream window that holds a
  whole 2 MiB blob response, so a blob flows without waiting for window updates;
- the server only receives requests, so its windows stay small;
- datagrams carry at most 1,452 bytes of UDP payload (a 1,500-byte Ethernet MTU less IPv6 and UDP headers,
  what a real network carries): the configured maximum, with path-MTU probing off so a loopback or jumbo
  path never makes the stack send larger ones. Congestion control is the core's (always on).
"""
from __future__ import annotations

import ssl

from cryptography.hazmat.primitives import serialization
from qh3.h3.connection import H3_ALPN
from qh3.quic.configuration import QuicConfiguration

from appliance.blob import MAX_BLOB_SIZE

IDLE_TIMEOUT = 20.0
HANDSHAKE_TIMEOUT = 4.0
MAX_DATAGRAM_SIZE = 1452
CLIENT_MAX_DATA = 500 * 1024 * 1024
CLIENT_MAX_STREAM_DATA = 2 * MAX_BLOB_SIZE  # a whole response (blob + HEADERS/DATA frames) fits
SERVER_MAX_DATA = 1024 * 1024
SERVER_MAX_STREAM_DATA = 64 * 1024  # a request is a HEADERS frame of a few hundred bytes
# qh3's HTTP/3 layer always announces SETTINGS_H3_DATAGRAM, which RFC 9297 says must come with this transport
# parameter; without it, strict peers (aioquic) close the connection. No datagram frames are ever sent.
MAX_DATAGRAM_FRAME_SIZE = MAX_DATAGRAM_SIZE


def _configuration(**kwargs) -> QuicConfiguration:
    return QuicConfiguration(alpn_protocols=H3_ALPN, idle_timeout=IDLE_TIMEOUT, max_datagram_size=MAX_DATAGRAM_SIZE,
                             probe_datagram_size=False, max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE, **kwargs)


def server_configuration(certificate, private_key) -> QuicConfiguration:
    """The server's QUIC configuration for a certificate and key as tls.py loads them (cryptography objects)."""
    config = _configuration(is_client=False, max_data=SERVER_MAX_DATA, max_stream_data=SERVER_MAX_STREAM_DATA)
    config.load_cert_chain(
        certificate.public_bytes(serialization.Encoding.PEM),
        private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return config


def client_configuration(server_name: str | None) -> QuicConfiguration:
    """The client's QUIC configuration; certificates are not verified (self-signed upstreams, as reflector.go)."""
    return _configuration(is_client=True, max_data=CLIENT_MAX_DATA, max_stream_data=CLIENT_MAX_STREAM_DATA,
                          verify_mode=ssl.CERT_NONE, server_name=server_name)
