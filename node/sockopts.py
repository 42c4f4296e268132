"""Socket options shared by the SCU's and the SCP's data phases.

Both run their data phase on a blocking socket whose timeouts the kernel keeps
(``SO_SNDTIMEO``/``SO_RCVTIMEO``): a socket with a Python-side timeout is non-blocking
underneath, so every ``send``/``recv`` is preceded by a ``poll()``, a ``recv`` returns one
segment at a time, and switching between two timeouts costs an ``ioctl`` each time.
"""

from __future__ import annotations

import socket
import struct


def _timeval(seconds: float | None) -> bytes:
    """``struct timeval``; None or 0 (no limit) is zero, anything above 0 at least 1 µs."""
    if not seconds or seconds <= 0:
        return struct.pack("ll", 0, 0)
    whole = int(seconds)
    micro = int(round((seconds - whole) * 1e6))
    return struct.pack("ll", whole, micro if whole or micro else 1)


def kernel_timeouts(sock: socket.socket, *, send: float | None, recv: float | None) -> bool:
    """Make ``sock`` blocking, with the kernel keeping its send and receive timeouts (None
    or 0: no limit); True when set. A timed-out call then fails with EAGAIN
    (``BlockingIOError``), not ``TimeoutError``. False (nothing changed) where the options
    do not exist."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(send))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(recv))
    except (OSError, AttributeError):
        return False
    sock.settimeout(None)
    return True
