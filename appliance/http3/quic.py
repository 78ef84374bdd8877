"""QUIC settings for the HTTP/3 server and client, close to reflector.go's (spec §3d, §11).

reflector.go: receive windows of 500 MiB, max idle timeout 20 s, handshake idle timeout 4 s. Here:
- the client (which receives blobs) gets the large connection window and a stream window that holds a
  whole 2 MiB blob response, so a blob flows without waiting for window updates;
- the server only receives requests, so its windows stay small: aioquic grows a stream's receive buffer
  up to the highest offset a peer sends, and a 500 MiB window would let one packet claim 500 MiB;
- datagrams carry 1350 bytes of QUIC payload (what browsers use; aioquic does no path-MTU discovery and
  its default of 1200 costs throughput), cubic congestion control.
"""
from __future__ import annotations

import ssl

from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from appliance.blob import MAX_BLOB_SIZE

IDLE_TIMEOUT = 20.0
HANDSHAKE_TIMEOUT = 4.0
MAX_DATAGRAM_SIZE = 1350
CONGESTION_CONTROL = "cubic"
CLIENT_MAX_DATA = 500 * 1024 * 1024
CLIENT_MAX_STREAM_DATA = 2 * MAX_BLOB_SIZE  # a whole response (blob + HEADERS/DATA frames) fits
SERVER_MAX_DATA = 1024 * 1024
SERVER_MAX_STREAM_DATA = 64 * 1024  # a request is a HEADERS frame of a few hundred bytes


def server_configuration(certificate, private_key) -> QuicConfiguration:
    """The server's QUIC configuration for a loaded certificate and key (see tls.py)."""
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, idle_timeout=IDLE_TIMEOUT,
                               max_data=SERVER_MAX_DATA, max_stream_data=SERVER_MAX_STREAM_DATA,
                               max_datagram_size=MAX_DATAGRAM_SIZE, congestion_control_algorithm=CONGESTION_CONTROL)
    config.certificate = certificate
    config.private_key = private_key
    return config


def client_configuration(server_name: str | None) -> QuicConfiguration:
    """The client's QUIC configuration; certificates are not verified (self-signed upstreams, as reflector.go)."""
    return QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, idle_timeout=IDLE_TIMEOUT,
                             max_data=CLIENT_MAX_DATA, max_stream_data=CLIENT_MAX_STREAM_DATA,
                             max_datagram_size=MAX_DATAGRAM_SIZE, congestion_control_algorithm=CONGESTION_CONTROL,
                             verify_mode=ssl.CERT_NONE, server_name=server_name)


def stream_delivered(quic: QuicConnection, stream_id: int) -> bool:
    """True once everything sent on the stream, FIN included, has been acknowledged by the peer.

    aioquic raises no event for this, so it is read from the connection's stream table (a stream that
    is gone from it has been fully delivered and discarded).
    """
    stream = quic._streams.get(stream_id)
    return stream is None or stream.sender.is_finished
