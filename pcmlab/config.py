"""Configuration models (pydantic v2) and their TOML / JSON files.

Every model forbids unknown fields so that a typo in a configuration file is an error,
not a silently ignored setting.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pcmlab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ModelT = TypeVar("ModelT", bound=BaseModel)


_OWN_PACKAGES = ("pcmlab", "protocols", "drivers", "mock_chip")


class _ShortHelp(type(BaseModel)):  # type: ignore[misc]  # pydantic's model metaclass
    """``help()`` on a configuration lists its fields and what pcmlab defines on it, not
    the pages of methods every pydantic model inherits (those still work)."""

    def __dir__(cls) -> list[str]:
        names = set(cls.model_fields)
        for klass in cls.__mro__:
            if klass.__module__.split(".")[0] in _OWN_PACKAGES:
                names.update(n for n in vars(klass) if not n.startswith("_"))
        return sorted(names)


class _Shown:
    """A default as a signature shows it: short."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def _default_text(field: Any) -> str:
    if field.default_factory is not None:
        return f"{field.default_factory.__name__}()"
    if field.is_required():
        return "(required)"
    if isinstance(field.default, BaseModel):
        return f"{type(field.default).__name__}()"
    return repr(field.default)


def _field_lines(cls: type[BaseModel]) -> list[str]:
    lines = []
    for name, field in cls.model_fields.items():
        lines.append(f"    {name}: {_type_name(field.annotation)} = {_default_text(field)}")
        if field.description:
            lines.append(f"        {field.description}")
    return lines


def _short_signature(cls: type[BaseModel]) -> inspect.Signature:
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                default=inspect.Parameter.empty if field.is_required()
                                else _Shown(_default_text(field)),
                                annotation=_Shown(_type_name(field.annotation)))
              for name, field in cls.model_fields.items()]
    return inspect.Signature(params)


class StrictModel(BaseModel, metaclass=_ShortHelp):
    """Base for every pcmlab configuration: unknown fields are rejected, values are frozen,
    NaN and infinity are refused as such (not as "should be >= 0")."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True,
                              allow_inf_nan=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Every configuration's docstring ends with its fields: name, type, default and
        what it means, as ``help()`` shows them."""
        super().__pydantic_init_subclass__(**kwargs)
        doc = (cls.__doc__ or cls.__name__).rstrip()
        cls.__doc__ = (f"{doc}\n\nFields (keyword arguments, or keys in a TOML/JSON file), "
                       "validated on construction; unknown ones are refused:\n"
                       + "\n".join(_field_lines(cls)) + "\n")
        cls.__signature__ = _short_signature(cls)  # type: ignore[misc]


class ArrayGeometry(StrictModel):
    """Shape of the crossbar array; cells are addressed row-major by ``row * cols + col``."""

    rows: int = Field(512, ge=1, le=65536, description="number of word lines")
    cols: int = Field(2048, ge=1, le=65536, description="number of bit lines")

    @property
    def n_cells(self) -> int:
        return self.rows * self.cols

    @model_validator(mode="after")
    def _fits_uint32(self) -> ArrayGeometry:
        if self.rows * self.cols > 2**32 - 1:
            raise ValueError(
                f"rows*cols = {self.rows * self.cols} exceeds the uint32 cell index range"
            )
        return self


class ChipLimits(StrictModel):
    """Hard limits of a chip's pulse generator; requests outside them are refused."""

    max_set_ua: float = Field(250.0, gt=0, description="largest SET amplitude, µA")
    max_reset_ua: float = Field(500.0, gt=0, description="largest RESET amplitude, µA")
    min_width_ns: float = Field(10.0, gt=0, description="shortest pulse, ns")
    max_width_ns: float = Field(10_000.0, gt=0, description="longest pulse, ns")

    @model_validator(mode="after")
    def _ordered(self) -> ChipLimits:
        if self.min_width_ns > self.max_width_ns:
            raise ValueError(
                f"min_width_ns={self.min_width_ns} is above max_width_ns={self.max_width_ns}"
            )
        return self


def format_validation_error(exc: ValidationError, source: str = "") -> str:
    """One line per problem: where, the value given, and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"{loc}{shown}: {err['msg']}")
    prefix = f"{source}: " if source else ""
    return prefix + "invalid configuration\n  " + "\n  ".join(lines)


def validate_model(cls: type[ModelT], data: Any, source: str = "") -> ModelT:
    """Build ``cls`` from ``data``, turning pydantic's error into a readable ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_model(cls: type[ModelT], path: str | Path) -> ModelT:
    """Read a model from a ``.toml`` or ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: expected a .toml or .json configuration file, got "
                          f"'{suffix or 'no suffix'}'")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a configuration is .toml or .json "
                          "text)") from None
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: expected a .toml or .json file, got '{suffix}'")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    return validate_model(cls, data, str(path))


def save_model(model: BaseModel, path: str | Path) -> Path:
    """Write a model to ``.toml`` or ``.json`` (chosen by the suffix)."""
    path = Path(path)
    data = model.model_dump(mode="json", exclude_none=True)
    suffix = path.suffix.lower()
    if suffix == ".toml":
        path.write_text(tomli_w.dumps(data), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    else:
        raise ConfigError(f"{path}: expected a .toml or .json file, got '{suffix}'")
    return path
