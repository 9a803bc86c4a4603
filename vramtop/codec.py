"""Dataclass <-> JSON-ready dict conversion shared by the one-shot JSON, the socket and recordings.

Decoding ignores unknown fields (newer writers may add some) and fills missing optional
fields with their defaults, so older and newer minor versions read each other.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from typing import Any, TypeVar, Union

T = TypeVar("T")
_MAX_INT = 1 << 63  # bytes, counts and times all fit; a larger integer is damage


class DecodeError(ValueError):
    """The data does not have the shape of the expected sample type."""


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain dicts, lists, ints, floats, strings and None: what
    ``dataclasses.asdict`` gives, built without its deep copy of every leaf (the agent's sampler
    turns a sample into dicts on every tick a monitor is connected, holding the GIL)."""
    return typing.cast(dict[str, Any], _plain(obj))


_SCALARS = (int, float, str, bool, type(None))


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain(value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value
    cls: Any = type(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(cls)}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return cls(*(_plain(item) for item in value))
    if isinstance(value, list | tuple):
        return cls(_plain(item) for item in value)
    if isinstance(value, dict):
        return cls((_plain(k), _plain(v)) for k, v in value.items())
    return copy.deepcopy(value)  # as asdict does with any other object


def finite_only(value: Any) -> Any:
    """``value`` (plain dicts, lists, scalars) with every NaN and infinity replaced by None: JSON
    has no token for them (Python would write ``NaN``, which strict parsers refuse), and such a
    number in a sample is damage, never a measurement."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_only(v) for v in value]
    return value


def from_dict(cls: type[T], data: Any) -> T:
    """Build ``cls`` from ``data``; raises DecodeError with the path of the bad field."""
    return typing.cast(T, _decode(cls, data, cls.__name__))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, value, path)
            except DecodeError as e:
                errors.append(str(e))
        raise DecodeError(errors[0] if errors else f"{path}: unexpected null")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise DecodeError(f"{path}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]
            return tuple(_decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):  # tuple[X, Y]: a pair
            raise DecodeError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(_decode(t, v, f"{path}[{i}]") for i, (t, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        key_t, val_t = typing.get_args(tp)
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: expected an object, got {type(value).__name__}")
        return {_decode(key_t, k, path): _decode(val_t, v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: expected an object, got {type(value).__name__}")
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _decode(hints[f.name], value[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DecodeError(f"{path}: missing field {f.name!r}")
        return tp(**kwargs)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # Damage, never a number to compute with: 1e999 (inf), NaN, a 400-digit integer.
            if isinstance(value, int) and abs(value) > _MAX_INT:
                raise DecodeError(f"{path}: number out of range")
            if not math.isfinite(value):
                raise DecodeError(f"{path}: not a finite number")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > _MAX_INT:
                raise DecodeError(f"{path}: number out of range")
            return value
    elif tp is Any or isinstance(value, tp):
        return value
    raise DecodeError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__}")
