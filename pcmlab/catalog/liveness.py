"""Is a run recorded as running still alive? A run file's writer holds a lock on it for as
long as it lives (``pcmlab.filelock``, one that HDF5's own file locks of readers do not
touch): the lock gone while the catalog says running means the writer was killed. Other
kinds (sweeps, checks) are judged by their writing process. Only runs written on this host
can be judged; others stay as recorded."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pcmlab.filelock import writer_alive

FILE_LOCKED_KINDS = ("run", "deployment", "characterization")


def effective_status(record: Mapping[str, Any]) -> str:
    """The status to show: ``killed`` for a run recorded as running whose writer is gone."""
    status = str(record.get("status"))
    if status not in ("running", "resumed") or record.get("host") != _host():
        return status
    path = Path(str(record.get("path")))
    if record.get("kind") in FILE_LOCKED_KINDS:
        alive = writer_alive(path)
        if alive is None:  # no file there: judge by the process
            return status if _process_alive(record.get("pid")) else "killed"
        return status if alive else "killed"
    return status if _process_alive(record.get("pid")) else "killed"


@functools.cache
def _host() -> str:
    return socket.gethostname()


def _process_alive(pid: Any) -> bool:
    if pid is None:
        return True  # nothing to judge by: as recorded
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
