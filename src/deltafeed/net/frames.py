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


def split_text_frames(data: bytes) -> list[bytes]:
    """The payloads of the unmasked frames ``data`` holds back to back (as :func:`text_frame` makes
    them); ValueError when ``data`` does not end on a frame boundary."""
    out = []
    i, n = 0, len(data)
    while i < n:
        if i + 2 > n:
            raise ValueError("a frame header is cut")
        length = data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        if i + length > n:
            raise ValueError("a frame's payload is cut")
        out.append(data[i : i + length])
        i += length
    return out
