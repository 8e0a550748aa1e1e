"""Bridges to other analog-AI tools (IBM aihwkit): models, networks and measured
conductances in both directions. Nothing here is needed to measure a chip."""
