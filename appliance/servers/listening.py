"""Listening sockets paused and resumed in place (drain): no gevent here, the supervisor uses it too.

A paused socket is shut down (SHUT_RD), which takes it out of the LISTEN state while it stays bound and
open in every process that holds it, so a connect is refused (a balancer's TCP check fails) and
`listen()` later puts it back into its SO_REUSEPORT group. HAProxy pauses its own listeners this way.
"""
from __future__ import annotations

import socket

LISTEN_BACKLOG = 2048  # what the supervisor listens with, restored on resume
# Services whose one listening socket every worker accepts from (the others have one SO_REUSEPORT socket per
# worker slot). Uploads are few, long and heavy: a shared queue lets the worker with the fewest take the next,
# where SO_REUSEPORT's hash splits 8 uploads over 2 workers 5/3 or 6/2 as often as 4/4. Only worker 0 (or the
# supervisor, while slot 0 has no worker) pauses a shared socket: two shutdowns of one socket must not race.
SHARED_SERVICES = ("receiver",)


def pause_listener(sock: socket.socket) -> None:
    """Refuse new connections on a listening socket without closing it; idempotent."""
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        # Paused already (a worker respawned during a drain finds its slot so). Never shut it down again:
        # Linux fails that with ENOTCONN but still marks the socket shut for reading, and after listen()
        # connections it accepts read end-of-file at once (the first ones after an undrain were closed
        # unanswered).
        return
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:  # ENOTCONN: not listening already
        pass


def resume_listener(sock: socket.socket) -> None:
    """Listen again (harmless on a socket that is listening)."""
    sock.listen(LISTEN_BACKLOG)
