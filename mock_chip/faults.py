"""Seeded transport faults for the mock servers: what a flaky link or controller does."""

from __future__ import annotations

import random
import threading
from typing import Literal

from pydantic import Field

from pcmlab.config import StrictModel


class TransportFaults(StrictModel):
    """Rates per request (0..1). Replies lost or damaged after the command ran are what
    exactly-once delivery must survive."""

    drop_request: float = Field(0.0, ge=0, le=1, description="lost before it runs")
    drop_reply: float = Field(0.0, ge=0, le=1, description="runs, but no reply is sent")
    corrupt_reply: float = Field(0.0, ge=0, le=1, description="runs, reply is damaged")
    delay_reply: float = Field(0.0, ge=0, le=1, description="runs, reply comes late")
    delay_s: float = Field(0.5, ge=0, le=60)
    disconnect: float = Field(0.0, ge=0, le=1, description="runs, then the link drops")
    only: Literal["all", "pulses"] = Field(
        "all", description="which requests the faults hit: all, or pulse batches only (to "
        "test exactly-once delivery where it matters)")
    seed: int = 0


class FaultInjector:
    """Draws the faults of each request from one seeded stream."""

    def __init__(self, faults: TransportFaults | None) -> None:
        self.faults = faults or TransportFaults()
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self.counts = {"drop_request": 0, "drop_reply": 0, "corrupt_reply": 0,
                       "delay_reply": 0, "disconnect": 0}
        self._eligible = True

    def scope(self, is_pulse: bool) -> None:
        """Say what the request being served is (the servers call it per request)."""
        self._eligible = self.faults.only == "all" or is_pulse

    def draw(self, name: str) -> bool:
        rate = getattr(self.faults, name)
        if rate <= 0 or not self._eligible:
            return False
        with self._lock:
            hit = self._rng.random() < rate
            if hit:
                self.counts[name] += 1
        return hit

    def corrupt(self, data: bytes) -> bytes:
        """Flip one byte (never the same value)."""
        with self._lock:
            i = self._rng.randrange(len(data))
            flip = self._rng.randrange(1, 256)
        return data[:i] + bytes([data[i] ^ flip]) + data[i + 1:]
