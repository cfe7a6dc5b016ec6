"""WebSocket text frames as a server sends them (unmasked, final), built by hand for fan-out.

The replica and the API hub write many small frames per loop iteration straight to sockets;
building the 2-10 byte header here (cached per length) is cheaper than a library call per frame.
"""

from __future__ import annotations

_HEADERS: dict[int, bytes] = {}


def text_header(n: int) -> bytes:
    """Header of an unmasked, final text frame carrying ``n`` bytes."""
    h = _HEADERS.get(n)
    if h is None:
        if n < 126:
            h = bytes((0x81, n))
        elif n < 65536:
            h = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            return b"\x81\x7f" + n.to_bytes(8, "big")  # rare: not worth caching
        _HEADERS[n] = h
    return h


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final text frame."""
    return text_header(len(payload)) + payload
