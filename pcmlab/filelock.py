"""The writer's lock on a run file: a live RunWriter holds a shared ``flock`` on its file
for its whole life. One probe for everyone who must tell a running writer from a dead
one (resume and recover, the catalog's status of a run); it imports nothing of pcmlab,
so both the store and the catalog stand on it without an import circle."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def writer_alive(path: str | Path) -> bool | None:
    """Whether a live RunWriter (any process on this machine) holds ``path``'s lock; None
    if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock, if we got it
    return False
