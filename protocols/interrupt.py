"""Ctrl-C that waits for the current driver call: a stop request checked between calls."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


class StopToken:
    """Set by Ctrl-C (or by the caller); a protocol checks it between driver calls."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


@contextmanager
def deferred_sigint(token: StopToken) -> Iterator[StopToken]:
    """While inside, SIGINT sets ``token`` instead of raising KeyboardInterrupt mid-command.

    Outside the main thread signals cannot be caught; the token still works when set by
    the caller.
    """
    if threading.current_thread() is not threading.main_thread():
        yield token
        return

    def _handler(signum: int, frame: FrameType | None) -> None:
        log.warning("interrupt received: stopping after the current driver call")
        token.request()

    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield token
    finally:
        signal.signal(signal.SIGINT, previous)
