"""Plain values the catalog stores: run ids, cell ranges, chip identities, times."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pcmlab.errors import CatalogError


def new_run_id() -> str:
    """A globally unique run id (a random UUID, 36 characters)."""
    return str(uuid.uuid4())


def check_run_id(run_id: str, source: object = None) -> str:
    """``run_id`` if it has the form pcmlab writes (a UUID, lower case with hyphens, as
    ``new_run_id``), else CatalogError naming it and ``source`` (the file it came from):
    an id is shown in pages and links, so nothing else may reach the catalog."""
    try:
        canonical = str(uuid.UUID(run_id)) if isinstance(run_id, str) else None
    except ValueError:
        canonical = None
    if canonical != run_id:
        where = f" in {source}" if source is not None else ""
        raise CatalogError(f"run id {run_id!r}{where} is not a run id pcmlab writes (a UUID "
                           "such as 3f2a6c1e-0b8d-4e57-9a4c-2d1f0e9b7a65); not registered")
    return run_id


@dataclass(frozen=True)
class CellRange:
    """Cells [start, stop) of a chip that a run touched: ``action`` is programmed, read or
    pulsed; ``n_set`` / ``n_reset`` the pulses the run applied to these cells in total."""

    action: str
    start: int
    stop: int
    n_set: int | None = None
    n_reset: int | None = None


def cell_ranges(cells: npt.ArrayLike, action: str, *,
                n_set: npt.ArrayLike | None = None,
                n_reset: npt.ArrayLike | None = None) -> list[CellRange]:
    """The cells as maximal runs of consecutive indices, with per-range pulse totals from
    per-cell counts (same order as ``cells``)."""
    c = np.asarray(cells, dtype=np.int64).ravel()
    if c.size == 0:
        return []
    order = np.argsort(c, kind="stable")
    cs = c[order]
    keep = np.ones(cs.size, dtype=bool)
    keep[1:] = cs[1:] != cs[:-1]
    breaks = np.flatnonzero(np.diff(cs[keep]) != 1) + 1
    uniq = cs[keep]
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [uniq.size]])

    def totals(counts: npt.ArrayLike | None) -> list[int | None]:
        if counts is None:
            return [None] * starts.size
        per = np.asarray(counts, dtype=np.int64).ravel()[order]
        # duplicates in ``cells`` add up into the one cell they name
        per_uniq = np.add.reduceat(per, np.flatnonzero(keep))
        return [int(per_uniq[a:b].sum()) for a, b in zip(starts, stops, strict=True)]

    sets, resets = totals(n_set), totals(n_reset)
    return [CellRange(action, int(uniq[a]), int(uniq[b - 1]) + 1, s, r)
            for a, b, s, r in zip(starts, stops, sets, resets, strict=True)]


@dataclass(frozen=True)
class ChipIdentity:
    maker: str
    model: str
    serial: str
    firmware: str
    identity: str

    @classmethod
    def parse(cls, identity: str) -> ChipIdentity:
        """From an ``*IDN?`` string ``maker,model,serial,firmware``; a string of another
        form is kept whole as the maker (and is its own serial)."""
        parts = [p.strip() for p in identity.split(",")]
        if len(parts) >= 4:
            return cls(parts[0], parts[1], parts[2], ",".join(parts[3:]), identity)
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2], "", identity)
        return cls(identity.strip(), "", identity.strip(), "", identity)

    @property
    def key(self) -> tuple[str, str, str]:
        """(maker, model, serial): one physical chip."""
        return self.maker, self.model, self.serial


GROUP_SEPARATOR = " | "  # drivers.ChipGroup joins its chips' identities with it


def group_members(identity: str) -> list[str]:
    """The identities of the chips of a chip group's identity (``drivers.ChipGroup``:
    chip k's cell c is the group's cell k x cells per chip + c); one chip: itself."""
    return [m.strip() for m in identity.split(GROUP_SEPARATOR)]


def split_by_chip(cells: list[CellRange] | tuple[CellRange, ...], n_chips: int,
                  cells_per_chip: int) -> list[list[CellRange]]:
    """A group run's ranges (group cell numbers) as each chip's own ranges (its local
    cells). A range cut by a chip boundary keeps its cells on both sides; its pulse totals
    cannot be split, so its pieces have none (the file has every cell's counts)."""
    out: list[list[CellRange]] = [[] for _ in range(n_chips)]
    for r in cells:
        first, last = r.start // cells_per_chip, (r.stop - 1) // cells_per_chip
        if last >= n_chips:
            raise CatalogError(f"cells {r.start}:{r.stop} are beyond the {n_chips} chips of "
                               f"{cells_per_chip} cells of the group; not registered")
        for k in range(first, last + 1):
            lo = max(r.start, k * cells_per_chip) - k * cells_per_chip
            hi = min(r.stop, (k + 1) * cells_per_chip) - k * cells_per_chip
            whole = first == last
            out[k].append(CellRange(r.action, lo, hi, r.n_set if whole else None,
                                    r.n_reset if whole else None))
    return out


def utc(value: dt.datetime | str | float | None) -> dt.datetime | None:
    """An aware UTC datetime from a datetime (naive = UTC), ISO 8601 text or Unix seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise CatalogError(f"time {value!r} is not ISO 8601 (e.g. 2026-03-01 or "
                               "2026-03-01T12:00:00+00:00)") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _InexactError(ValueError):
    pass


def _exact_float(text: str) -> float:
    value = float(text)
    if json.dumps(value) != text:  # 1.10 would read back as 1.1, 1e3 as 1000.0
        raise _InexactError(text)
    return value


def _no_constant(text: str) -> Any:
    raise _InexactError(text)  # NaN, Infinity: not JSON a catalog can compare


def parse_value(text: str) -> Any:
    """A metadata value typed on a command line or in a filter box: JSON (3, true, null,
    "quoted text", {"a": 1}) when it reads back exactly as typed, else the text itself, so
    that firmware=1.10 stays "1.10" and lot=1e3 stays "1e3" (quote to force text:
    n='"3"')."""
    try:
        return json.loads(text, parse_float=_exact_float, parse_constant=_no_constant)
    except ValueError:  # not JSON, or a number that would not read back as typed
        return text
