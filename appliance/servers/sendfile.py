"""Writing a response header and a blob body to a gevent socket, with os.sendfile for file-backed blobs.

gevent's socket.sendfile is a read()+send() loop in Python; os.sendfile on the raw (non-blocking)
descriptor, waiting for writability with wait_write on EAGAIN, keeps the copy in the kernel.
"""
from __future__ import annotations

import os
import socket

from gevent.socket import wait_write

from appliance.stores.base import Blob, StreamedBlob

# Below this a body is joined to its header: one send, one segment.
_JOIN_LIMIT = 64 * 1024


def send_file(sock, fd: int, size: int, timeout: float | None) -> None:
    """os.sendfile `size` bytes of file descriptor `fd` (from offset 0) to the gevent socket `sock`."""
    out = sock.fileno()
    offset = 0
    timeout_exc = TimeoutError("i/o timeout: client stopped reading")
    while offset < size:
        try:
            sent = os.sendfile(out, fd, offset, size - offset)
        except BlockingIOError:
            wait_write(out, timeout=timeout, timeout_exc=timeout_exc)
            continue
        if sent == 0:  # the file is shorter than announced: never pad, the client must see a short body
            raise OSError(f"blob file shrank while it was being sent ({offset} of {size} bytes)")
        offset += sent


def send_blob(sock, header: bytes, blob: Blob, timeout: float | None) -> None:
    """Send `header` immediately followed by the blob's bytes (the socket's timeout covers each send).

    A streamed blob is relayed chunk by chunk as it arrives; when its chunks end in an error, that error
    propagates with the body incomplete, and the caller must close the connection.
    """
    if isinstance(blob, StreamedBlob):
        pending = header
        for chunk in blob.chunks:
            if pending:  # the header goes out with the first chunk: one segment
                sock.sendall(pending + chunk)
                pending = b""
            else:
                sock.sendall(chunk)
        return
    if blob.file is not None:
        # MSG_MORE: the kernel holds the header back and sends it in the same segment as the body's start.
        sock.sendall(header, socket.MSG_MORE)
        send_file(sock, blob.file.fileno(), blob.size, timeout)
        return
    data = blob.data
    if len(data) <= _JOIN_LIMIT:
        sock.sendall(header + data)
    else:
        sock.sendall(header, socket.MSG_MORE)
        sock.sendall(data)
