"""A durable on-disk spool of candle batches, so that a cold store outage (or a stop during one) loses nothing.

While the cold store fails, the :class:`~deltafeed.store.writer.BatchWriter` appends its batches here
instead of holding them in memory, and replays them oldest-first once the store is back (or at the
next start). Every write to a store is an idempotent upsert, so the spool is *at-least-once*: after a
crash a batch may be replayed a second time, which leaves the store exactly as after the first time;
nothing is lost and nothing is doubled.

File format (``PATH``, little-endian)::

    header   8 bytes   b"DFSPOOL\\x01" (format version 1), written with the first record
    record   4 bytes   payload length n (unsigned, > 0)
             4 bytes   CRC-32 (zlib) of the payload
             n bytes   payload: a msgpack array of rows, each the array
                       [instrument, timeframe, open_time, open, high, low, close, volume, trades, closed, final]
                       (rows written before ``final`` existed end at ``closed`` and replay as not final)
    record   ...

An empty file is an empty spool; records are only ever appended, each written and fsync'ed before
:meth:`Spool.append` returns. The replay position lives in ``PATH.pos`` (JSON ``{"offset": N}``: the
byte offset of the first record not yet known to be in the store), replaced atomically (temp file,
fsync, rename, fsync of the directory) on every :meth:`Spool.commit`. Once every record is replayed
the position is first reset to 0 and then the spool truncated to empty, so a crash between the two
replays everything once more rather than skipping anything.

Opening validates the records after the position. A crash in the middle of an append leaves a torn
last record (short, or failing its CRC, or zero-filled): it is cut off and counted in
:attr:`Spool.torn`, since that batch's :meth:`~Spool.append` never returned and the writer still held
it. A bad record followed by more data is corruption, not a crash, and opening refuses with
:class:`~deltafeed.store.base.StoreError`. The file header guards against pointing ``--spool`` at
some other file, which would otherwise look torn and be truncated.

One process per spool: the spool file is held under an exclusive ``flock`` for the life of the
object (the kernel releases it when the process dies, so a crash never leaves a stale lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Sequence
from itertools import islice

import msgspec
from msgspec.structs import astuple

from deltafeed.model import BadInput, Candle
from deltafeed.store.base import Row, StoreError, missing_dir

log = logging.getLogger("deltafeed.spool")

#: File header: magic and format version. Bump the version when the record or row layout changes
#: in a way older rows cannot be read with, so an old spool is refused with a clear message instead
#: of misread. (Appending a row field with a default, as ``final`` was, needs no bump: older rows
#: simply lack it.)
MAGIC = b"DFSPOOL\x01"
_RECORD = struct.Struct("<II")  # payload length, CRC-32 of the payload
#: Largest payload accepted (far above a writer batch: 100,000 rows are ~10 MB); keeps every length
#: readable by one pread and rejects absurd lengths early.
MAX_PAYLOAD = 1 << 30


class _SpoolRow(msgspec.Struct, array_like=True, gc=False):
    """One row as stored; ``final`` is absent from rows written before it existed (read as False)."""

    instrument: str
    timeframe: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    closed: bool
    final: bool = False


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[_SpoolRow])
if _SpoolRow.__struct_fields__[2:] != Candle.__struct_fields__:
    raise RuntimeError(  # pragma: no cover - a guard for editors
        "Candle's fields changed; update _SpoolRow (a new field last, with a default, keeps old spools"
        " readable; anything else needs a new version byte in MAGIC) in store/spool.py"
    )


def encode_rows(rows: Sequence[Row]) -> bytes:
    """The payload of one record: rows as compact msgpack arrays (no field names)."""
    return _ENCODER.encode([(i, tf, *astuple(c)) for i, tf, c in rows])


def decode_rows(payload: bytes) -> list[Row]:
    """Rows back from :func:`encode_rows`; raises ``msgspec.ValidationError`` or ``DecodeError``."""
    return [
        (
            r.instrument,
            r.timeframe,
            Candle(r.open_time, r.open, r.high, r.low, r.close, r.volume, r.trades, r.closed, r.final),
        )
        for r in _DECODER.decode(payload)
    ]


def _count_rows(payload: bytes) -> int:
    """Number of rows in a payload, read from its msgpack array header without decoding the rows."""
    first = payload[0]
    if 0x90 <= first <= 0x9F:  # fixarray
        return first & 0x0F
    if first == 0xDC and len(payload) >= 3:  # array 16
        return int.from_bytes(payload[1:3], "big")
    if first == 0xDD and len(payload) >= 5:  # array 32
        return int.from_bytes(payload[1:5], "big")
    raise ValueError("payload is not a msgpack array")


def _sync(fd: int) -> None:
    """Make written data durable: fdatasync (covers the new file size), or F_FULLFSYNC on macOS
    where plain fsync stops at the drive's cache."""
    full = getattr(fcntl, "F_FULLFSYNC", None)
    if full is not None:
        fcntl.fcntl(fd, full)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover
        os.fsync(fd)


def _sync_dir(path: str) -> None:
    """fsync a directory, so a created or renamed entry in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        chunk = os.pread(fd, n, offset)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class Spool:
    """Candle batches on disk, appended durably and replayed in order; see the module docstring.

    Use: :meth:`append` a batch; :meth:`peek` the oldest unreplayed batches, write them to the store,
    then :meth:`commit` them. Methods are thread-safe (the writer runs them in worker threads to keep
    fsync off the event loop). Raises :class:`BadInput` when the path cannot be opened, is not a
    spool, or is held by another process.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        #: Side file holding the replay position.
        self.pos_path = self.path + ".pos"
        #: Torn records cut off when opening (0 or 1: only the last record can be torn by a crash).
        self.torn = 0
        #: Bytes those torn records took.
        self.torn_bytes = 0
        #: Rows appended since this object was opened.
        self.appended = 0
        #: Rows committed (known to be in the store) since this object was opened.
        self.replayed = 0
        self._lock = threading.Lock()
        #: (offset, payload length, crc, rows) of every record not yet committed, oldest first.
        self._records: deque[tuple[int, int, int, int]] = deque()
        self._rows = 0
        self._size = 0
        self._peeked = 0
        self._fd = -1
        self._fd = self._open()
        try:
            self._load()
        except OSError as e:
            self.close()
            raise StoreError(f"cannot open the spool {self.path}: {e.strerror or e}") from e
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------------------

    def _open(self) -> int:
        directory = os.path.dirname(self.path)
        missing = missing_dir(self.path)  # never created silently: a typo in --spool is an error
        if missing is not None:
            problem, create = missing
            raise BadInput(
                f"cannot open spool {self.path}: {problem}; {create + ' or ' if create else ''}pass --spool"
                " with a path in an existing directory (or --spool off)"
            )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            _sync_dir(directory)  # the file entry itself must survive a crash
        except OSError as e:
            raise BadInput(
                f"cannot open spool {self.path}: {e.strerror or e}; pass --spool with a writable file path"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput(
                f"spool {self.path} is in use by another deltafeed run; give each run its own --spool"
            ) from None
        except OSError as e:  # e.g. a filesystem without flock support
            os.close(fd)
            raise BadInput(f"cannot lock spool {self.path}: {e.strerror or e}; put the spool on a local disk") from e
        return fd

    def _read_pos(self) -> int:
        try:
            with open(self.pos_path, "rb") as f:
                offset = json.loads(f.read())["offset"]
            if isinstance(offset, int) and offset >= 0:
                return offset
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError):
            pass
        # Replaying from the start is always safe (at-least-once); skipping data never is.
        log.warning("spool position %s is unreadable; replaying %s from its start", self.pos_path, self.path)
        return 0

    def _write_pos(self, offset: int) -> None:
        """Persist the replay position atomically: a crash leaves either the old or the new one."""
        tmp = self.pos_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _pwrite_all(fd, json.dumps({"offset": offset}).encode(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.pos_path)
        _sync_dir(os.path.dirname(self.path))

    def _corrupt(self, offset: int, why: str) -> StoreError:
        return StoreError(
            f"spool {self.path} is corrupt at byte {offset} ({why}) with more data after it, which a crash"
            " cannot cause. The records before that byte are intact: keep them with"
            f" `truncate -s {offset} {self.path}`, or move the file aside to start an empty spool (its"
            " unreplayed candles are then lost from the store until the venue's history is fetched again)"
        )

    def _load(self) -> None:
        fd = self._fd
        size = os.fstat(fd).st_size
        pos = self._read_pos()
        if size:
            head = _pread_exact(fd, len(MAGIC), 0)
            if head != MAGIC:
                if len(head) < len(MAGIC) and MAGIC.startswith(head):
                    self._cut(0, size)  # a crash while the very first record was being written
                    size = 0
                elif head[:7] == MAGIC[:7]:
                    raise StoreError(
                        f"spool {self.path} was written by another deltafeed version (format {head[7]}, this"
                        f" one reads {MAGIC[7]}); replay it with that version, or move it aside"
                    )
                else:
                    raise BadInput(
                        f"{self.path} is not a deltafeed spool; pass --spool with a new path or an existing"
                        " spool (the file was left untouched)"
                    )
        if pos > size:
            log.warning(
                "spool position %d is past the end of %s (%d bytes); replaying it from its start", pos, self.path, size
            )
            pos = 0
        offset = max(pos, len(MAGIC))
        while offset < size:
            header = _pread_exact(fd, _RECORD.size, offset)
            if len(header) < _RECORD.size:
                self._cut(offset, size)
                break
            length, crc = _RECORD.unpack(header)
            end = offset + _RECORD.size + length
            if end > size or length > MAX_PAYLOAD:
                # Runs past the end of the file: the append that wrote it never finished.
                self._cut(offset, size)
                break
            payload = _pread_exact(fd, length, offset + _RECORD.size)
            bad = "empty record" if length == 0 else None
            if bad is None and zlib.crc32(payload) != crc:
                bad = "checksum mismatch"
            rows = 0
            if bad is None:
                try:
                    rows = _count_rows(payload)
                except ValueError as e:
                    bad = str(e)
            if bad is not None:
                if end >= size or self._zeros_from(end, size):
                    self._cut(offset, size)  # a torn last record (e.g. zero-filled by the filesystem)
                    break
                raise self._corrupt(offset, bad)
            self._records.append((offset, length, crc, rows))
            self._rows += rows
            offset = end
        self._size = os.fstat(fd).st_size
        if not self._records and (self._size or pos):
            self._reset()  # fully replayed before a crash: start clean
        elif self._records and self._records[0][0] != pos:
            self._write_pos(self._records[0][0])

    def _zeros_from(self, offset: int, size: int) -> bool:
        while offset < size:
            chunk = os.pread(self._fd, min(1 << 20, size - offset), offset)
            if not chunk or chunk.count(0) != len(chunk):
                return False
            offset += len(chunk)
        return True

    def _cut(self, offset: int, size: int) -> None:
        """Drop a torn tail from ``offset``; its append never returned, so no caller counted on it."""
        os.ftruncate(self._fd, offset)
        _sync(self._fd)
        self.torn += 1
        self.torn_bytes += size - offset
        log.warning(
            "spool %s: cut a torn last record (%d bytes at byte %d) left by a crash during an append",
            self.path,
            size - offset,
            offset,
        )

    def _reset(self) -> None:
        """Everything is in the store: position to 0 first, then truncate (see the module docstring)."""
        self._write_pos(0)
        os.ftruncate(self._fd, 0)
        _sync(self._fd)
        self._size = 0

    # -- use ----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise StoreError(f"spool {self.path} is closed")

    @property
    def batches(self) -> int:
        """Batches appended and not yet committed."""
        return len(self._records)

    @property
    def rows(self) -> int:
        """Rows appended and not yet committed."""
        return self._rows

    @property
    def bytes(self) -> int:
        """Size of the spool file, replayed records included (they go only once all are replayed)."""
        return self._size

    def append(self, rows: Sequence[Row]) -> None:
        """Add a batch at the end, durably: written and fsync'ed before this returns.

        Raises :class:`StoreError` naming the spool when the disk refuses (full, I/O error); nothing
        of the batch is then kept, so the caller still owns it.
        """
        if not rows:
            return
        payload = encode_rows(rows)
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"a spool batch holds at most {MAX_PAYLOAD} bytes; split batches of {len(rows)} rows")
        crc = zlib.crc32(payload)
        record = _RECORD.pack(len(payload), crc) + payload
        with self._lock:
            self._check_open()
            start = self._size
            data = record if start else MAGIC + record
            try:
                _pwrite_all(self._fd, data, start)
                _sync(self._fd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)  # no half record for the next append to follow
                raise StoreError(
                    f"cannot append {len(rows)} candles to the spool {self.path}: {e.strerror or e}"
                    " (free disk space there, or point --spool at another disk)"
                ) from e
            self._records.append((start + len(data) - len(record), len(payload), crc, len(rows)))
            self._size = start + len(data)
            self._rows += len(rows)
            self.appended += len(rows)

    def peek(self, max_rows: int | None = None) -> list[Row] | None:
        """The oldest uncommitted batch, or None when the spool is empty.

        With ``max_rows``, the following batches too while the total stays within ``max_rows`` (at
        least one batch is returned), so a long backlog is replayed in few large writes; a key
        repeated across them comes in order, and the store keeps its last occurrence. The batches
        stay in the spool until :meth:`commit`.
        """
        with self._lock:
            self._check_open()
            self._peeked = 0
            if not self._records:
                return None
            take, total = 1, self._records[0][3]
            if max_rows is not None:
                for rec in islice(self._records, 1, None):
                    if total + rec[3] > max_rows:
                        break
                    take += 1
                    total += rec[3]
            rows: list[Row] = []
            for offset, length, crc, _ in islice(self._records, take):
                try:
                    payload = _pread_exact(self._fd, length, offset + _RECORD.size)
                except OSError as e:
                    raise StoreError(f"cannot read the spool {self.path}: {e.strerror or e}") from e
                if zlib.crc32(payload) != crc:
                    raise StoreError(f"spool {self.path} changed under this process at byte {offset}")
                try:
                    rows.extend(decode_rows(payload))
                except (msgspec.ValidationError, msgspec.DecodeError) as e:
                    raise StoreError(f"spool {self.path}: record at byte {offset} does not decode: {e}") from e
            self._peeked = take
            return rows

    def commit(self) -> None:
        """Mark the batches the last :meth:`peek` returned as stored; they are not replayed again.

        When nothing is left the spool is truncated to empty. Raises :class:`StoreError` if the
        position cannot be saved; the batches then stay and are replayed again (harmlessly).
        """
        with self._lock:
            self._check_open()
            take = self._peeked
            if not take:
                raise RuntimeError("Spool.commit() needs a peek() that returned batches first")
            self._peeked = 0
            done = list(islice(self._records, take))
            offset, length, _, _ = done[-1]
            end = offset + _RECORD.size + length
            try:
                if take == len(self._records):
                    self._write_pos(0)
                else:
                    self._write_pos(end)
            except OSError as e:
                raise StoreError(f"cannot save the replay position of the spool {self.path}: {e.strerror or e}") from e
            for _ in range(take):
                self._records.popleft()
            n = sum(r[3] for r in done)
            self._rows -= n
            self.replayed += n
            if not self._records:
                try:
                    os.ftruncate(self._fd, 0)
                    _sync(self._fd)
                    self._size = 0
                except OSError as e:
                    # Keep the file and point the position at its end instead: replaying these old
                    # batches after a crash would overwrite what is written directly from now on.
                    log.warning("cannot truncate the drained spool %s: %s", self.path, e)
                    with contextlib.suppress(OSError):
                        self._write_pos(self._size)

    def close(self) -> None:
        """Release the file and its lock. Nothing is lost: appends are durable and commits saved.
        Safe to call twice."""
        with self._lock:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def __del__(self) -> None:
        # A dropped spool must not keep its lock for the life of the process.
        with contextlib.suppress(Exception):
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spool({self.path!r}, {self.batches} batches, {self.rows} rows)"
