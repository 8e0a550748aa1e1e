"""What both mock servers share: serving from a background thread until stopped."""

from __future__ import annotations

import threading
from typing import TypeVar

S = TypeVar("S", bound="BackgroundServer")


class BackgroundServer:
    """``start`` runs ``serve_forever`` in a daemon thread; ``stop`` ends it (also as a
    context manager). Subclasses loop in ``serve_forever`` until ``self._stop`` is set."""

    _thread_name = "mock-server"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:  # pragma: no cover - every server overrides
        raise NotImplementedError

    def start(self: S) -> S:
        self._thread = threading.Thread(target=self.serve_forever, name=self._thread_name,
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
