"""What the pages share: the query argument, the page frame, formatting."""

from __future__ import annotations

import html
import math

from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import Div

from pcmlab.dashboard.catalog import CatalogView, RunEntry

NAV = ('<a href="/">runs</a>')


def argument(doc: Document, name: str) -> str | None:
    """One query argument of the page's URL, as text (None if absent)."""
    args = doc.session_context.request.arguments if doc.session_context else {}
    values = args.get(name)
    if not values:
        return None
    value = values[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def entry_of(doc: Document, catalog: CatalogView, kinds: tuple[str, ...] | None = None
             ) -> RunEntry | None:
    """The catalog entry the URL's ``id`` names; None (and a message on the page) when
    there is none. An id is only ever looked up in the catalog, never used as a path."""
    run_id = argument(doc, "id")
    entry = catalog.run(run_id) if run_id else None
    if entry is None or (kinds is not None and entry.kind not in kinds):
        what = "no id given" if not run_id else f"no {'/'.join(kinds or ('run',))} with id " \
            f"'{html.escape(run_id)}' in the catalog"
        doc.add_root(column(Div(text=NAV), Div(text=f"<h2>{what}</h2><p>Pages show only "
                                               "runs registered in the catalog; pick one "
                                               "from the runs table.</p>", name="not_found")))
        doc.title = "pcmlab: not found"
        return None
    return entry


def fmt_s(t_s: float) -> str:
    """A duration in the unit a lab reads it in."""
    if not math.isfinite(t_s):
        return "-"
    for unit, size in (("y", 365 * 86400.0), ("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if t_s >= size:
            return f"{t_s / size:.3g} {unit}"
    return f"{t_s:.3g} s"


def header(entry: RunEntry, extra: str = "") -> Div:
    return Div(text=f"{NAV} &nbsp; <b>{html.escape(entry.kind)} {html.escape(entry.id)}</b> "
               f"&middot; {html.escape(entry.status)} &middot; {html.escape(entry.chip)} "
               f"&middot; started {html.escape(entry.started)} &middot; "
               f"{html.escape(entry.path.name)} {extra}", name="header")
