"""The writer's lock on a run file: a live RunWriter holds a Linux open-file-description
(OFD) byte-range lock on one byte of its file far beyond its end, for its whole life. One
probe for everyone who must tell a running writer from a dead one (resume and recover,
the catalog's status of a run, a reader choosing SWMR); it imports nothing of pcmlab, so
both the store and the catalog stand on it without an import circle.

Why this lock: HDF5 takes ``flock`` locks on the file itself (a SWMR or plain reader
holds a shared one for as long as it has the file open), so a writer's ``flock`` could
not be told from a reader's: a killed run read as running while any reader had it open.
``flock`` and ``fcntl`` byte-range locks do not interact on Linux's local file systems,
and a range at ``LOCK_OFFSET`` lies beyond any byte HDF5 writes or locks. An OFD lock
(``F_OFD_SETLK``), unlike a classic POSIX ``lockf``, belongs to the open file
description and not to the process: closing another descriptor of the same file (HDF5
does, at every close) does not drop it; the kernel drops it when the writer dies. On NFS,
Linux emulates ``flock`` with byte-range locks over the whole file, so there a reader's
HDF5 lock would again look like a writer (see docs/file-format.md).
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

LOCK_OFFSET = 1 << 62  # one byte here: far beyond the end of any file
# struct flock on Linux (x86_64, aarch64): short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (0 for OFD locks), padded to 32 bytes
_FLOCK = "@hhqqi4x"


def _flock(l_type: int) -> bytes:
    return struct.pack(_FLOCK, l_type, os.SEEK_SET, LOCK_OFFSET, 1, 0)


def hold_writer_lock(path: str | Path) -> int:
    """Take the writer's lock on ``path``; returns the descriptor that holds it (closing
    it releases the lock). Exclusive: BlockingIOError (or PermissionError) if a live writer
holds it already."""
    fd = os.open(path, os.O_RDWR)  # an exclusive (write) lock needs a descriptor for writing
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK))
    except BaseException:
        os.close(fd)
        raise
    return fd


def writer_alive(path: str | Path) -> bool | None:
    """Whether a live RunWriter (any process on this machine, this one included) holds
    ``path``'s lock; None if there is no such file. Only asks (``F_OFD_GETLK``): the
    probe takes no lock, so it never stands in a writer's way."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK))
    finally:
        os.close(fd)
    return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK
