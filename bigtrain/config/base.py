"""Typed config base: strict construction from dicts and YAML, dotted ``key=value`` overrides.

Each component owns a small dataclass that subclasses :class:`Config`. Field docstrings are the
string literal right under the field (read by ``bigtrain train --help-config``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bigtrain.errors import BigtrainError

C = TypeVar("C", bound="Config")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where no information is lost."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except BigtrainError as e:
                errors.append(str(e))
        raise BigtrainError(errors[0] if errors else f"{key}: unexpected value {value!r}")
    if origin is list:
        (item_tp,) = args
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `data.path=one.bin` on the command line means a list of one
        if not isinstance(value, list):
            raise BigtrainError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise BigtrainError(f"{key}: expected one of {choices}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise BigtrainError(f"{key}: expected a mapping, got {value!r}")
        return tp.from_dict(value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise BigtrainError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # YAML reads 1e6 as a float
        raise BigtrainError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string
            except ValueError:
                pass
        raise BigtrainError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise BigtrainError(f"{key}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise BigtrainError(f"{key}: unsupported field type {_type_name(tp)}")


@dataclasses.dataclass
class Config:
    """Base for component configs: strict ``from_dict``, ``to_dict`` and ``validate``."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, prefix: str = "") -> C:
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            known = ", ".join(sorted(fields))
            raise BigtrainError(f"unknown config key {prefix}{unknown[0]} (known keys under "
                                f"{prefix.rstrip('.') or 'the top level'}: {known})")
        kwargs = {name: _coerce(data[name], hints[name], prefix + name) for name in data}
        obj = cls(**kwargs)
        obj.validate(prefix)
        return obj

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, prefix: str = "") -> None:
        """Check rules local to this component; raise BigtrainError naming the key."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.n_layers=4"`` → (["model", "n_layers"], 4); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise BigtrainError(f"bad override {text!r}: expected key=value, e.g. train.max_steps=100")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config dict (unknown keys are caught by ``from_dict``)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BigtrainError(f"bad override {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BigtrainError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise BigtrainError(f"{p}:{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BigtrainError(f"{p}: expected a mapping of sections at the top level")
    return data


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written as string literals right under dataclass fields."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
