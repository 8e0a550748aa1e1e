"""The runs table: one page of the catalog at a time (paged on the server), newest first,
with the filters ``pcmlab runs`` has; refreshed every few seconds (status is live)."""

from __future__ import annotations

import html
from urllib.parse import quote

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
    DataTable,
    Div,
    HTMLTemplateFormatter,
    Select,
    TableColumn,
    TextInput,
)

from pcmlab.dashboard.catalog import KINDS, STATUSES, CatalogView, RunFilter
from pcmlab.errors import CatalogError

PAGE_ROWS = 50
REFRESH_MS = 3000
# <%- %>: HTML-escaped (underscore's <%= %> inserts raw text); the ids are also checked
# when registered (records.check_run_id) and quoted in the link
LINK_TEMPLATE = '<a href="<%- link %>"><%- value %></a>'
PAGE_OF_KIND = {"run": "run", "deployment": "deployment", "characterization": "run",
                "sweep": "sweep"}


def _columns(entries) -> dict[str, list]:
    return {
        "id": [e.id[:8] for e in entries],  # as git shows commits; the link has it whole
        "link": [f"/{PAGE_OF_KIND.get(e.kind, 'run')}?id={quote(e.id, safe='')}"
                 for e in entries],
        "kind": [e.kind for e in entries],
        "status": [e.status for e in entries],
        "started": [e.started for e in entries],
        "chip": [e.chip for e in entries],
        "readouts": ["" if e.n_readouts is None else str(e.n_readouts) for e in entries],
        "file": [e.path.name for e in entries],
        "tags": [", ".join(f"{k}={v}" for k, v in e.tags.items()) for e in entries],
    }


class RunsPage:
    def __init__(self, doc: Document, catalog: CatalogView) -> None:
        self.catalog, self.offset = catalog, 0
        # as 'pcmlab runs --chip': the serial (or the whole identity string)
        self.chip = TextInput(title="chip", placeholder="serial", width=160)
        self.kind = Select(title="kind", value="", options=["", *KINDS], width=130)
        self.status = Select(title="status", value="", options=["", *STATUSES], width=120)
        self.since = TextInput(title="since (UTC)", placeholder="2026-03-01", width=140)
        self.until = TextInput(title="until (UTC)", placeholder="2026-03-31", width=140)
        self.tag = TextInput(title="tag", placeholder="key or key=value", width=160)
        self.where = TextInput(title="where", placeholder="KEY=VALUE", width=160)
        for w in (self.chip, self.kind, self.status, self.since, self.until, self.tag,
                  self.where):
            w.on_change("value", self._on_filter)
        self.prev = Button(label="◀ newer", width=90)
        self.next = Button(label="older ▶", width=90)
        self.prev.on_click(lambda: self._move(-PAGE_ROWS))
        self.next.on_click(lambda: self._move(PAGE_ROWS))
        self.info = Div(text="", name="runs_info")
        self.message = Div(text="", name="runs_message")
        self.source = ColumnDataSource(_columns([]), name="runs_source")
        link = HTMLTemplateFormatter(template=LINK_TEMPLATE)
        cols = [TableColumn(field="id", title="id", formatter=link, width=110),
                TableColumn(field="kind", title="kind", width=90),
                TableColumn(field="status", title="status", width=80),
                TableColumn(field="started", title="started (UTC)", width=170),
                TableColumn(field="chip", title="chip", width=260),
                TableColumn(field="readouts", title="readouts", width=70),
                TableColumn(field="file", title="file", width=200),
                TableColumn(field="tags", title="tags", width=200)]
        self.table = DataTable(source=self.source, columns=cols, width=1300, height=1000,
                               index_position=None, sortable=False, name="runs_table")
        doc.add_root(column(Div(text="<h2>pcmlab: runs</h2>"),
                            row(self.chip, self.kind, self.status, self.since, self.until,
                                self.tag, self.where),
                            row(self.prev, self.next, self.info), self.message, self.table))
        doc.title = "pcmlab runs"
        self.refresh()
        doc.add_periodic_callback(self.refresh, REFRESH_MS)

    def _filter(self) -> RunFilter:
        def text(w) -> str | None:
            return w.value.strip() or None

        tag, where = text(self.tag), text(self.where)
        # the tag box as its placeholder says: a key (has it, as 'pcmlab runs --tag') or
        # key=value (equals it, as --where)
        tags = (tag,) if tag and "=" not in tag else ()
        wheres = tuple(w for w in (where, tag if tag and "=" in tag else None) if w)
        return RunFilter(chip=text(self.chip), kind=text(self.kind), status=text(self.status),
                         since=text(self.since), until=text(self.until),
                         tag=tags, where=wheres)

    def _on_filter(self, _attr: str, _old: str, _new: str) -> None:
        self.offset = 0
        self.refresh()

    def _move(self, step: int) -> None:
        self.offset = max(0, self.offset + step)
        self.refresh()

    def refresh(self) -> None:
        try:
            filt = self._filter()
            entries, total = self.catalog.runs(filt, self.offset, PAGE_ROWS)
        except (ValueError, CatalogError) as exc:  # a filter the catalog cannot take
            self.message.text = f"<span style='color:firebrick'>{html.escape(str(exc))}</span>"
            return
        self.message.text = ""
        if self.offset >= total > 0:
            self.offset = (total - 1) // PAGE_ROWS * PAGE_ROWS
            entries, total = self.catalog.runs(filt, self.offset, PAGE_ROWS)
        self.source.data = _columns(entries)
        first = self.offset + 1 if entries else 0
        self.info.text = f"runs {first}-{self.offset + len(entries)} of {total}"
        self.prev.disabled = self.offset == 0
        self.next.disabled = self.offset + PAGE_ROWS >= total


def runs_page(catalog: CatalogView, doc: Document) -> None:
    RunsPage(doc, catalog)
