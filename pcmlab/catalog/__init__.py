"""The run catalog: an index of every file pcmlab writes, every chip and the cells each
run touched, on SQLite (default) or PostgreSQL. docs/catalog.md.

    import pcmlab
    df = pcmlab.runs(kind="run", since="2026-03-01")      # a pandas DataFrame
    with pcmlab.open_catalog() as cat:                    # --catalog / PCMLAB_CATALOG
        cat.tag(run_id, {"operator": "ada"})

The files stay the record: the catalog never holds a measured value that is not in a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcmlab.catalog.database import Catalog
from pcmlab.catalog.location import (
    ENV_VAR,
    default_location,
    redact,
    resolve_location,
    user_data_dir,
)
from pcmlab.catalog.records import CellRange, ChipIdentity, cell_ranges, new_run_id
from pcmlab.catalog.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    import pandas as pd

# the columns of pcmlab.runs(), in this order (more may be added at the end)
RUN_COLUMNS = (
    "run_id", "kind", "status", "started_at", "ended_at", "chip_serial", "chip_maker",
    "chip_model", "chip_firmware", "n_readouts", "n_cells", "path", "host", "user",
    "pcmlab_version", "driver", "resource", "rows", "cols", "arrays", "content_hash",
    "file_size", "network_fingerprint", "data_hash", "meta", "config", "updated_at", "pid",
    "chip_id",
)


def open_catalog(location: str | Path | None = None, *, timeout_s: float = 10.0,
                 create: bool = True, read_only: bool = False) -> Catalog:
    """The catalog at ``location`` (a path: SQLite; ``postgresql://USER@HOST/DB``), else
    ``PCMLAB_CATALOG``, else the per-user SQLite file. Created if it does not exist, unless
    ``create=False`` or ``read_only`` (then CatalogError naming the path)."""
    return Catalog.open(location, timeout_s=timeout_s, create=create, read_only=read_only)


def runs(catalog: str | Path | Catalog | None = None, **filters: Any) -> pd.DataFrame:
    """One row per run, newest first, as a pandas DataFrame (columns ``RUN_COLUMNS``).
    Filters as ``Catalog.list_runs``: chip, kind, status, since, until, tag, where; a page
    with offset, limit; ``with_config=True`` fills the ``config`` column (else None: it
    is large)."""
    import pandas as pd

    if isinstance(catalog, Catalog):
        records = catalog.list_runs(**filters)
    else:
        with open_catalog(catalog) as cat:
            records = cat.list_runs(**filters)
    frame = pd.DataFrame.from_records(records, columns=list(RUN_COLUMNS))
    for col in ("started_at", "ended_at", "updated_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


__all__ = [
    "ENV_VAR",
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "Catalog",
    "CellRange",
    "ChipIdentity",
    "cell_ranges",
    "default_location",
    "new_run_id",
    "open_catalog",
    "redact",
    "resolve_location",
    "runs",
    "user_data_dir",
]
