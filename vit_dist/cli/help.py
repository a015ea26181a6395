"""The reference of the config keys and command options that ``--help`` prints.

Rendered from the schema itself (the dataclasses of ``vit_dist.core.config``: field types, defaults,
``_field`` ranges and docs, ``Literal`` choices), so a key added there is listed here with no
other change, and a listed type, default or range is the one validation applies. The entry
points' own options (``checkpoint=``, ``ema=``, ...) are declared as :class:`Key` tables in
each entry point and rendered the same way. No torch.
"""

from __future__ import annotations

import dataclasses
import textwrap
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..core.config import MAX_INT, Config

_FREE = "kwargs"  # ModelSection's catch-all of model keywords (config._build)


@dataclass(frozen=True)
class Key:
    """One key or option as ``--help`` lists it."""

    key: str  # dotted, e.g. "optim.lr"
    type: str  # e.g. "float", "int or null", "fp32|bf16|fp16"
    default: str = ""  # as typed on the command line ("" = none)
    doc: str = ""
    bounds: str = ""  # e.g. "in [0, 256]", "> 0"
    is_bool: bool = False  # a bare ``--key`` means true


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return f"list of {_type_name(item)}"
    if tp is type(None):
        return "null"
    if tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _is_bool(tp) -> bool:
    """bool, or bool or null: a bare ``--key`` can only mean true."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return bool in args and all(a in (bool, type(None)) for a in args)


def _bound(v: float | int) -> str:
    """A range bound; a large power of two as ``2**N``, as the schema spells it."""
    if isinstance(v, int):
        return f"2**{v.bit_length() - 1}" if v > 4096 and v & (v - 1) == 0 else str(v)
    return f"{v:.6g}"


def _bounds(meta) -> str:
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open")
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_bound(lo)}, {_bound(hi)}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_bound(lo)}"
    return f"<= {_bound(hi)}"


def shown(value: Any) -> str:
    """A value as one would type it in YAML or an override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # exact: what is typed back gives the same value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    return str(value) if value != "" else "''"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is dataclasses.MISSING:  # never: every config field has a default
        raise TypeError(f"config field {f.name} has no default")
    return f.default_factory()


def config_keys(cls=Config, prefix: str = "") -> list[Key]:
    """Every config key in schema order, with ``model.<kw>`` for the free model keywords."""
    out: list[Key] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key, doc = hints[f.name], prefix + f.name, f.metadata.get("doc", "")
        if dataclasses.is_dataclass(tp):
            out += config_keys(tp, key + ".")
        elif f.name == _FREE and prefix == "model.":
            out.append(Key(f"{prefix}<kw>", "any", "", doc))
        else:
            out.append(Key(key, _type_name(tp), shown(_default(f)), doc, _bounds(f.metadata), _is_bool(tp)))
    return out


def _wrap(text: str, indent: str, width: int = 100) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent) if text else []


def render_keys(keys: Iterable[Key], *, grouped: bool = False) -> str:
    """One entry per key: ``key  type, bounds, default X`` and its doc indented below it;
    ``grouped``: under a heading per section (the part before the first dot)."""
    lines: list[str] = []
    section = None
    for k in keys:
        head = k.key.split(".")[0] if "." in k.key else "top level"
        if grouped and head != section:
            section = head
            lines += ["", f"{section}:"]
        facts = ", ".join(p for p in (k.type, k.bounds, f"default {k.default}" if k.default else "") if p)
        lines.append(f"  {k.key}  ({facts})")
        lines += _wrap(k.doc, " " * 6)
    return "\n".join(lines)


def render_config_help(only: Sequence[str] | None = None) -> str:
    """The config reference that ``--help`` of train and evaluate prints: every key, or those
    ``only`` names (a whole key, or a prefix ending in ``.``)."""
    intro = (
        "config keys: set them in the YAML file (sections as mappings) or on the command line "
        "as key=value, --key value or --key=value (values are YAML: 3, 1e-3, true, null, [2,2,6,2]); "
        "a bare --key of a true/false key means true. Everything is checked before any work: an "
        "unknown key names the closest one. Numbers must be finite; integers are at most "
        f"{MAX_INT:,} unless stated."
    )
    keys = config_keys()
    if only is not None:
        keys = [k for k in keys if any(k.key == o or (o.endswith(".") and k.key.startswith(o)) for o in only)]
    return "\n".join(_wrap(intro, "")) + "\n" + render_keys(keys, grouped=True)
