"""One module per page; each builds a Bokeh document from a catalog entry."""
