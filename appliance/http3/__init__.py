"""HTTP/3 over QUIC (qh3): the blob server of the http3 processes and the client of the HTTP/3 upstream store.

  quic.py        QUIC settings shared by both sides (ALPN h3, idle timeout, windows, datagram size)
  tls.py         the server certificate: configured, or self-signed in <state_dir>/http3/
  server.py      asyncio server protocol: /get/{hash}, /has/{hash} (spec §3d)
  client.py      asyncio client: one reused QUIC connection, multiplexed requests, liveness, reconnect
  loopthread.py  an asyncio loop in a real OS thread, callable from plain threads and gevent greenlets
  udp.py         the UDP transport: batched receive, GSO sends

Only qh3's public API is used (QuicConnection's methods, the protocol's public callbacks and transmit()).
"""
