"""The spool: where batches wait, on local disk, while the transport is unavailable.

One NDJSON file per process and destination (``<dest>-<uuid7>-<pid>.ndjson``, ``<dest>`` a hash of
the url), one event envelope per line, append-only: each batch is written whole, then flushed
and fsync'd, before the batch counts as spooled. The owning process holds an exclusive
``fcntl.flock`` on its file for as long as it lives; a file whose lock can be taken belongs to a
process that has died (the kernel drops the lock with the process). Such orphans are adopted
by the next client for the same destination and re-sent, oldest first, before anything new.

Replay reads the files in order from a read offset; ``advance`` moves the offset past the events
the transport acknowledged (or refused for good), and a file read to its end is deleted. The
gateway is idempotent by ``event_id``, so events re-sent after a crash are harmless.

If the spool directory cannot be written (read-only file system, disk full) batches are kept in
memory instead, in the same order, and an error is logged: nothing is dropped while the
process lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import orjson

from studbook._events import uuid7

log = logging.getLogger("studbook")

_READ_BLOCK = 256 * 1024


def destination_key(destination: str) -> str:
    """A short stable name for a destination url, used as the spool files' prefix."""
    import hashlib  # lazily: loading OpenSSL costs megabytes of RSS

    return hashlib.sha256(destination.encode()).hexdigest()[:16]


class _Segment:
    """A run of spooled events: a file on disk, or (if the disk failed) a list in memory."""

    def __init__(
        self,
        path: Path | None,
        fd: int | None,
        *,
        own: bool,
        size: int = 0,
    ) -> None:
        self.path = path
        self.fd = fd
        self.own = own  # written by this process (so it may still grow)
        self.size = size  # bytes (disk) or lines (memory)
        self.offset = 0  # read position: bytes (disk) or lines (memory)
        self.lines: list[bytes] = []

    @property
    def in_memory(self) -> bool:
        return self.path is None

    @property
    def exhausted(self) -> bool:
        return self.offset >= self.size


class Spool:
    """The spool of one client: its own file plus the orphans it adopted, in send order."""

    def __init__(self, directory: Path, destination: str) -> None:
        self.directory = directory
        self.key = destination_key(destination)
        self._segments: deque[_Segment] = deque()
        # The chunk handed out by the last next_chunk: end offsets of its events.
        self._ends: list[int] = []
        self._chunk_end = 0
        self._memory_warned = False

    # ------------------------------------------------------------------ state

    @property
    def pending(self) -> bool:
        """Whether events wait in the spool (new batches must then queue up behind them)."""
        return bool(self._segments)

    @property
    def paths(self) -> list[Path]:
        """The spool files in send order."""
        return [s.path for s in self._segments if s.path is not None]

    # ------------------------------------------------------------------ orphans

    def adopt_orphans(self) -> list[Path]:
        """Take over spool files of dead processes for this destination; return their paths."""
        try:
            names = sorted(p.name for p in self.directory.glob(f"{self.key}-*.ndjson"))
        except OSError:
            return []
        known = {s.path for s in self._segments}
        adopted: list[Path] = []
        for name in names:
            path = self.directory / name
            if path in known:
                continue
            segment = _lock_orphan(path)
            if segment is None:
                continue
            if segment.size == 0:
                _remove(segment)
                continue
            self._segments.append(segment)
            adopted.append(path)
        # An orphan must be sent before our own file, which holds newer events.
        own = [s for s in self._segments if s.own]
        others = [s for s in self._segments if not s.own]
        self._segments = deque(others + own)
        return adopted

    # ------------------------------------------------------------------ writing

    def append(self, events: Sequence[bytes]) -> None:
        """Append a batch at the end; durable (fsync'd) on return unless the disk failed."""
        if not events:
            return
        data = b"".join(e + b"\n" for e in events)
        last = self._segments[-1] if self._segments else None
        if last is not None and last.own and last.in_memory:
            last.lines.extend(events)
            last.size += len(events)
            return
        try:
            if last is None or not last.own:
                last = self._create()
                self._segments.append(last)
            assert last.fd is not None
            _write_all(last.fd, data)
            os.fsync(last.fd)
            last.size += len(data)
        except OSError as exc:
            if not self._memory_warned:
                log.error(
                    "studbook: cannot write the spool in %s (%s); keeping unsent events in "
                    "memory: they are lost if this process dies before the gateway is back",
                    self.directory,
                    exc,
                )
                self._memory_warned = True
            if last is not None and last.own and not last.in_memory and last.fd is not None:
                # A torn write may have left part of a line: end it, so the next reader
                # sees one malformed line (skipped) rather than two glued events.
                with contextlib.suppress(OSError):
                    _write_all(last.fd, b"\n")
                    last.size = os.fstat(last.fd).st_size
            memory = _Segment(None, None, own=True)
            memory.lines.extend(events)
            memory.size = len(events)
            self._segments.append(memory)

    def _create(self) -> _Segment:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.key}-{uuid7().replace('-', '')}-{os.getpid()}.ndjson"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        return _Segment(path, fd, own=True)

    # ------------------------------------------------------------------ reading

    def next_chunk(self, max_events: int, max_bytes: int) -> list[bytes]:
        """The next events to re-send, in order (at least one while ``pending``)."""
        while self._segments:
            segment = self._segments[0]
            if segment.exhausted:
                self._finish(segment)
                continue
            chunk = self._read(segment, max_events, max_bytes)
            if chunk:
                return chunk
            if segment.exhausted:  # only malformed lines were left
                self._finish(segment)
        self._ends = []
        return []

    def advance(self, count: int) -> None:
        """Mark the first ``count`` events of the last chunk as done (sent or refused)."""
        if not self._segments or count <= 0:
            return
        segment = self._segments[0]
        segment.offset = self._chunk_end if count >= len(self._ends) else self._ends[count - 1]
        self._ends = self._ends[count:]
        if segment.exhausted:
            self._finish(segment)

    def _read(self, segment: _Segment, max_events: int, max_bytes: int) -> list[bytes]:
        if segment.in_memory:
            lines = segment.lines[segment.offset : segment.offset + max_events]
            self._ends = [segment.offset + i + 1 for i in range(len(lines))]
            self._chunk_end = segment.offset + len(lines)
            return lines
        assert segment.fd is not None
        block = max(_READ_BLOCK, min(max_bytes, 4 * _READ_BLOCK))
        while True:
            data = os.pread(segment.fd, block, segment.offset)
            complete = data.rfind(b"\n") + 1
            at_end = segment.offset + len(data) >= segment.size
            if complete or at_end:
                break
            block *= 2  # one line longer than the block: read more
        if not complete:
            # The writer died in the middle of its last write: that batch was never spooled.
            log.warning(
                "studbook: ignoring %d bytes of a partly written batch at the end of %s",
                len(data),
                segment.path,
            )
            segment.offset = segment.size
            self._ends = []
            return []
        out: list[bytes] = []
        ends: list[int] = []
        position = segment.offset
        total = 0
        consumed = position
        for line in data[:complete].split(b"\n")[:-1]:
            end = position + len(line) + 1
            if out and (len(out) >= max_events or total + len(line) > max_bytes):
                break
            position = end
            consumed = end
            if not _is_event(line):
                if line.strip():
                    log.warning("studbook: skipping a malformed line in %s", segment.path)
                if not out:
                    segment.offset = end  # nothing handed out yet: skip it for good
                continue
            out.append(line)
            ends.append(end)
            total += len(line) + 1
        self._ends = ends
        self._chunk_end = consumed
        return out

    @property
    def reading_orphan(self) -> bool:
        """Whether the next chunk comes from another (ended) process's file."""
        return bool(self._segments) and not self._segments[0].own

    def set_aside(self) -> Path | None:
        """Give up the orphan being read, leaving its file (and unsent events) for another
        process: e.g. one whose token may write the events' project."""
        if not self.reading_orphan:
            return None
        segment = self._segments.popleft()
        if segment.fd is not None:
            with contextlib.suppress(OSError):
                os.close(segment.fd)  # releases the lock
        self._ends = []
        return segment.path

    # ------------------------------------------------------------------ ending

    def _finish(self, segment: _Segment) -> None:
        """A segment read to its end: delete its file and forget it."""
        self._segments.remove(segment)
        _remove(segment)

    def close(self) -> None:
        """Release the files (their locks); files with unsent events stay for the next client."""
        for segment in self._segments:
            if segment.in_memory and segment.size > segment.offset:
                log.error(
                    "studbook: %d events could not be delivered nor spooled to disk: lost",
                    segment.size - segment.offset,
                )
            if segment.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
        self._segments.clear()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's files without touching them.

        Closing our copies of the descriptors keeps the parent's locks (they belong to the
        shared open file descriptions) and ensures the locks die with the parent.
        """
        for segment in self._segments:
            if segment.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(segment.fd)
        self._segments = deque()
        self._ends = []


def _lock_orphan(path: Path) -> _Segment | None:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None  # gone (another process finished it) or unreadable
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None  # its process is alive (or another process is re-sending it)
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
        size = os.fstat(fd).st_size
    except OSError:
        same, size = False, 0
    if not same:  # deleted (and maybe re-created) between open and lock
        os.close(fd)
        return None
    return _Segment(path, fd, own=False, size=size)


def _remove(segment: _Segment) -> None:
    if segment.path is not None:
        with contextlib.suppress(OSError):
            os.unlink(segment.path)  # while still holding the lock
    if segment.fd is not None:
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        segment.fd = None


def _is_event(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
