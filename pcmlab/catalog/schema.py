"""The catalog's tables (one schema for SQLite and PostgreSQL, SQLAlchemy Core) and its
version history. docs/catalog.md describes every column.

The catalog indexes the measurement files; it never holds a measured value that is not
also in a file.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 1

metadata = sa.MetaData()

# The chip as it reports itself (*IDN?: maker, model, serial, firmware). One row per
# physical chip (maker, model, serial); the firmware is the one last seen.
chips = sa.Table(
    "chips", metadata,
    sa.Column("chip_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("maker", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("serial", sa.String(200), nullable=False),
    sa.Column("firmware", sa.String(200), nullable=False, default=""),
    sa.Column("identity", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer),
    sa.Column("cols", sa.Integer),
    sa.Column("arrays", sa.Integer),
    sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("maker", "model", "serial", name="uq_chips_identity"),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),  # uuid4, also in the file
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("path", sa.Text, nullable=False),  # absolute, on the host that wrote it
    sa.Column("host", sa.String(255), nullable=False, default=""),
    sa.Column("pid", sa.Integer),  # the writing process, on ``host``, while running
    sa.Column("content_hash", sa.String(64)),  # sha256 of the file once it is finished
    sa.Column("file_size", sa.BigInteger),
    sa.Column("chip_id", sa.Integer, sa.ForeignKey("chips.chip_id")),
    sa.Column("driver", sa.Text),  # the identity string as the driver gave it
    sa.Column("resource", sa.Text),
    sa.Column("rows", sa.Integer),
    sa.Column("cols", sa.Integer),
    sa.Column("arrays", sa.Integer),
    sa.Column("user", sa.String(200), nullable=False, default=""),
    sa.Column("pcmlab_version", sa.String(64), nullable=False, default=""),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("n_readouts", sa.Integer),
    sa.Column("n_cells", sa.BigInteger),
    sa.Column("network_fingerprint", sa.String(64)),
    sa.Column("data_hash", sa.String(64)),
    sa.Column("config", sa.JSON),  # the run's full configuration
    sa.Column("meta", sa.JSON, nullable=False, default=dict),  # free-form metadata and tags
    sa.Index("ix_runs_started_at", "started_at"),
    sa.Index("ix_runs_kind", "kind"),
    sa.Index("ix_runs_status", "status"),
    sa.Index("ix_runs_chip_id", "chip_id"),
    sa.Index("ix_runs_content_hash", "content_hash"),
)

# Which cells a run touched and how: half-open ranges [start, stop) of flat cell indices.
# Pulse counts per range are totals; a cell's own counts are in the run's file.
run_cells = sa.Table(
    "run_cells", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("chip_id", sa.Integer, sa.ForeignKey("chips.chip_id")),
    sa.Column("action", sa.String(16), nullable=False),  # programmed, read, pulsed
    sa.Column("start", sa.BigInteger, nullable=False),
    sa.Column("stop", sa.BigInteger, nullable=False),
    sa.Column("n_set", sa.BigInteger),
    sa.Column("n_reset", sa.BigInteger),
    sa.Index("ix_run_cells_chip_range", "chip_id", "start", "stop"),
    sa.Index("ix_run_cells_run", "run_id"),
)

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("pcmlab_version", sa.String(64), nullable=False),
)

RUN_KINDS = ("run", "deployment", "characterization", "sweep", "check")
STATUSES = ("running", "finished", "stopped", "killed", "resumed", "recovered", "failed")
ACTIONS = ("programmed", "read", "pulsed")

# Migration path: MIGRATIONS[v] takes a catalog at version v to v + 1, in one transaction.
# A new column is added here (and to the tables above); a catalog opened by a newer pcmlab
# is brought up to date on open, one step at a time.
Migration = Callable[[Connection], None]
MIGRATIONS: dict[int, Migration] = {}
