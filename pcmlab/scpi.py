"""The SCPI vocabulary as data: a dialect file says how a controller spells each
operation, its replies, its block layout and its error codes.

One place for the words: ``drivers.visa.VisaDriver`` formats messages and parses replies
with a ``Dialect``, and the mock chip's SCPI server parses messages and formats replies
with the same ``Dialect``, so the server can speak any dialect the driver can. The
default dialect (``pcmlab/dialects/default.toml``) is pcmlab's own command set.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcmlab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PATH = Path(__file__).resolve().parent / "dialects" / "default.toml"

# operation -> (fields its message must carry, fields its reply must carry); None: no reply
REQUIRED: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "identify": ((), ("identity",)),
    "clear_errors": ((), None),
    "error": ((), ("code", "message")),
    "size": ((), ("rows", "cols")),
    "limits": ((), ("max_set_ua", "max_reset_ua", "min_width_ns", "max_width_ns")),
    "pulse": (("seq", "kind", "width_ns", "block"), ("seq", "applied")),
    "read": (("block",), ("block",)),
    "read_array": ((), ("block",)),
    "time": ((), ("time_s",)),
    "advance": (("dt_s",), None),
}
# operations a controller may have: chips with in-array MVM (pcmlab.mvm)
OPTIONAL: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "mvm_config": ((), ("dac_bits", "adc_bits", "max_vectors")),
    "mvm": (("block",), ("block",)),
}
ERROR_NAMES = ("none", "data_type", "missing_parameter", "undefined_header", "block_data",
               "data_out_of_range", "too_much_data", "queue_overflow")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DTYPES = {"u4", "i4", "u8", "f4", "f8"}


@dataclass(frozen=True)
class Operation:
    """One operation: ``header`` and its argument fields in order; the reply template."""

    name: str
    header: str
    args: tuple[str, ...]
    reply: str | None
    reply_pattern: re.Pattern[str] | None

    def message(self, **values: Any) -> str:
        """The message text up to (not including) a block."""
        parts = [("" if a == "block" else _text(values[a])) for a in self.args]
        if not self.args:
            return self.header
        text = ",".join(parts)
        return f"{self.header} {text}"

    def parse_reply(self, text: str) -> dict[str, str] | None:
        if self.reply_pattern is None:
            return None
        m = self.reply_pattern.match(text.strip())
        return None if m is None else m.groupdict()

    def format_reply(self, **values: Any) -> str:
        assert self.reply is not None
        return _FIELD.sub(lambda m: _text(values[m.group(1)]), self.reply)


def _text(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.9g}"
    return str(v)


@dataclass(frozen=True)
class Dialect:
    """A controller's SCPI command set (see ``load_dialect``)."""

    name: str
    source: str
    operations: dict[str, Operation]
    kinds: dict[str, str]  # "SET"/"RESET" -> the controller's word
    byte_order: str  # "<" or ">"
    cell_dtype: np.dtype
    amplitude_dtype: np.dtype
    conductance_dtype: np.dtype
    errors: dict[str, int]

    def __getitem__(self, name: str) -> Operation:
        return self.operations[name]

    def has(self, name: str) -> bool:
        return name in self.operations

    @property
    def record_dtype(self) -> np.dtype:
        return np.dtype([("cell", self.cell_dtype), ("amp", self.amplitude_dtype)])

    def kind_of(self, word: str) -> str | None:
        """The pulse kind ("SET"/"RESET") of a controller's word, any case."""
        for kind, w in self.kinds.items():
            if w.upper() == word.strip().upper():
                return kind
        return None

    def by_header(self) -> dict[str, Operation]:
        return {op.header.upper(): op for op in self.operations.values()}


def load_dialect(path: str | Path | None = None) -> Dialect:
    """Read and check a dialect file (default: pcmlab's own). A missing operation, a
    template that does not parse or lacks a field, an unknown data type or byte order is
    refused, naming the key and the file."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise ConfigError(f"{p}: no such dialect file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not a TOML file ({exc})") from None

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{p}: {key}: {why}")

    ops_data = data.get("operations")
    if not isinstance(ops_data, dict):
        raise fail("operations", "missing (a table of operation = { message, reply })")
    unknown = sorted(set(ops_data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise fail(f"operations.{unknown[0]}", f"not an operation (known: "
                   f"{', '.join([*REQUIRED, *OPTIONAL])})")
    operations = {}
    for name, (need_args, need_reply) in REQUIRED.items():
        key = f"operations.{name}"
        entry = ops_data.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("message"), str):
            raise fail(key, "missing; give { message = \"...\", reply = \"...\" }")
        operations[name] = _operation(name, entry, need_args, need_reply, fail)
    for name, (need_args, need_reply) in OPTIONAL.items():
        entry = ops_data.get(name)
        if entry is None:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("message"), str):
            raise fail(f"operations.{name}", "give { message = \"...\", reply = \"...\" }")
        operations[name] = _operation(name, entry, need_args, need_reply, fail)
    if ("mvm" in operations) != ("mvm_config" in operations):
        given = "mvm" if "mvm" in operations else "mvm_config"
        raise fail(f"operations.{given}", "mvm_config and mvm go together: give both (a "
                   "chip that computes in the array) or neither")
    headers = [op.header.upper() for op in operations.values()]
    dup = sorted({h for h in headers if headers.count(h) > 1})
    if dup:
        raise fail("operations", f"header {dup[0]!r} is used by two operations")
    kinds = data.get("kinds", {})
    if not isinstance(kinds, dict) or set(kinds) != {"SET", "RESET"} or not all(
            isinstance(v, str) and v and "," not in v for v in kinds.values()):
        raise fail("kinds", "give SET = \"...\" and RESET = \"...\" (words without commas)")
    if kinds["SET"].upper() == kinds["RESET"].upper():
        raise fail("kinds", "SET and RESET need different words")
    block = data.get("block", {})
    order = {"little": "<", "big": ">"}.get(block.get("byte_order", "little"))
    if order is None:
        raise fail("block.byte_order", f"{block.get('byte_order')!r}: expected \"little\" or "
                   "\"big\"")
    dtypes = {}
    for key, default in (("cell", "u4"), ("amplitude", "f4"), ("conductance", "f4")):
        code = block.get(key, default)
        if code not in _DTYPES:
            raise fail(f"block.{key}", f"{code!r}: expected one of {', '.join(sorted(_DTYPES))}")
        dtypes[key] = np.dtype(order + code)
    if dtypes["cell"].kind not in "ui":
        raise fail("block.cell", "cell indices are integers (u4, i4, u8)")
    errors = data.get("errors", {})
    missing = [e for e in ERROR_NAMES if not isinstance(errors.get(e), int)]
    if missing:
        raise fail(f"errors.{missing[0]}", "missing (an integer error code)")
    return Dialect(str(data.get("name", p.stem)), str(p), operations, dict(kinds), order,
                   dtypes["cell"], dtypes["amplitude"], dtypes["conductance"],
                   {e: int(errors[e]) for e in ERROR_NAMES})


def _operation(name: str, entry: dict[str, Any], need_args: tuple[str, ...],
               need_reply: tuple[str, ...] | None, fail) -> Operation:
    key = f"operations.{name}"
    message = entry["message"].strip()
    if not message.isascii() or not message:
        raise fail(f"{key}.message", "an ASCII message is needed")
    header, _, rest = message.partition(" ")
    if _FIELD.search(header):
        raise fail(f"{key}.message", f"{message!r}: the header (before the first space) "
                   "cannot hold a field")
    args: list[str] = []
    if rest.strip():
        for part in rest.split(","):
            m = _FIELD.fullmatch(part.strip())
            if m is None:
                raise fail(f"{key}.message", f"{message!r}: each argument after the header "
                           "must be one {field}, comma-separated")
            args.append(m.group(1))
    if sorted(args) != sorted(need_args):
        raise fail(f"{key}.message", f"{message!r} has fields {args or 'none'}; "
                   f"{name} takes {list(need_args) or 'none'}")
    if "block" in args and args[-1] != "block":
        raise fail(f"{key}.message", "the {block} comes last")
    reply = entry.get("reply", "")
    if not isinstance(reply, str):
        raise fail(f"{key}.reply", "a string")
    if need_reply is None:
        if reply:
            raise fail(f"{key}.reply", f"{name} is a command: its reply is \"\"")
        return Operation(name, header, tuple(args), None, None)
    fields = _FIELD.findall(reply)
    if sorted(fields) != sorted(need_reply):
        raise fail(f"{key}.reply", f"{reply!r} has fields {fields or 'none'}; the reply to "
                   f"{name} carries {list(need_reply)}")
    if "block" in fields and reply.strip() != "{block}":
        raise fail(f"{key}.reply", "a block reply is \"{block}\" alone")
    if not header.endswith("?"):
        raise fail(f"{key}.message", f"{header!r}: a query's header ends in '?'")
    pattern = "^" + "".join(
        f"(?P<{piece[1:-1]}>.*?)" if _FIELD.fullmatch(piece) else re.escape(piece)
        for piece in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", reply) if piece) + "$"
    return Operation(name, header, tuple(args), reply, re.compile(pattern, re.S))


DEFAULT = load_dialect()
