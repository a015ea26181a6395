"""Bounded, validated reading of every small file vit_dist reads from disk.

Configs, ``dataset.json``, checkpoint ``meta.json``, ``run.json``, export sidecars and hub
``config.json`` files are input a user (or a stranger) may have edited, truncated or crafted.
Each is read through this module, so that whatever it holds the reader ends in one of two ways:
the parsed value, or one line naming the file and what is wrong, raised as the error kind the
caller passes (a config's is a ``ConfigError``, a checkpoint's a ``CheckpointError``, ...).

- Only a regular file is read (a FIFO would block the reader, ``/dev/zero`` would fill memory),
  and at most ``limit`` bytes of it.
- Text must be UTF-8 (a BOM is allowed); the error names the file and the byte offset.
- JSON and YAML may nest at most ``MAX_DEPTH`` levels and expand to at most ``MAX_VALUES``
  values: a YAML alias bomb (``&a [*a, *a, ...]`` nested) is a few hundred bytes that expands
  to billions of values, and every later walk of it (validation, a repr, a deepcopy) would hang.
- A key given twice in one mapping is refused, naming the key and its line: a silently dropped
  first ``train:`` section is a wrong run.
- YAML is parsed by libyaml's C parser when PyYAML has it (a 5 MB config: under a second instead
  of 40), safe loading only.

:func:`short` keeps a value shown in an error message to a short prefix, so a message never
carries a megabyte of the input. The ``Fields`` checker gives readers a typed, one-line-per-
mistake view of a parsed JSON object.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import reprlib
import stat
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from .errors import VitDistError

MAX_DEPTH = 64  # nesting levels: no file vit_dist reads needs more than 8
MAX_VALUES = 1_000_000  # values after alias expansion: a 10k-class dataset.json has ~60k
KIB, MIB = 1024, 1024 * 1024

ErrorKind = Callable[[str], VitDistError]


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 3, 6, 6, 6, 6
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 60, 40, 60


def short(value: Any, limit: int = 60) -> str:
    """A repr of ``value`` cut to about ``limit`` characters: an error message quotes input,
    never all of it. Bounded before it is built (reprlib: a few levels and items), since the
    full repr of an expanded alias bomb would itself never finish."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


@contextlib.contextmanager
def _regular_file(
    path: str | os.PathLike, *, limit: int, error: ErrorKind, what: str
) -> Iterator[tuple[int, int]]:
    """``(descriptor, size)`` of ``path``, a regular file of at most ``limit`` bytes, or
    ``error(line)``; an OSError while it is read is ``error(line)`` too. Opened non-blocking,
    so a FIFO is refused instead of waiting for a writer forever."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is not a regular file ({_file_kind(st.st_mode)})")
        if st.st_size > limit:
            raise error(f"{what} {path} is {st.st_size} bytes, over the {_size(limit)} a {what} may have")
        yield fd, st.st_size
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def read_bytes(path: str | os.PathLike, *, limit: int, error: ErrorKind, what: str) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes, or ``error(line)``."""
    with _regular_file(path, limit=limit, error=error, what=what) as (fd, _):
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(limit + 1 - total, 1 * MIB))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # it grew while we read
            raise error(f"{what} {path} is over the {_size(limit)} a {what} may have")
        return b"".join(chunks)


def read_head(
    path: str | os.PathLike, count: int, *, limit: int, error: ErrorKind, what: str
) -> tuple[bytes, int]:
    """The first ``count`` bytes (fewer if the file is shorter) of ``path`` and its size: the
    checks of :func:`read_bytes`, without reading the rest (a header)."""
    with _regular_file(path, limit=limit, error=error, what=what) as (fd, size):
        return os.read(fd, count), size


def read_text(path: str | os.PathLike, *, limit: int, error: ErrorKind, what: str) -> str:
    """:func:`read_bytes` decoded as UTF-8 (a leading BOM dropped)."""
    return decode_text(read_bytes(path, limit=limit, error=error, what=what), f"{what} {path}", error)


def decode_text(data: bytes, source: str, error: ErrorKind) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        hint = " (it looks like UTF-16: save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise error(f"{source} is not UTF-8 text (byte {e.start}){hint}") from None


# --------------------------------------------------------------------------- JSON


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str, *, source: str, error: ErrorKind) -> Any:
    """``json.loads`` with duplicate keys, NaN/Infinity, nesting past ``MAX_DEPTH`` and more than
    ``MAX_VALUES`` values refused; each failure one line naming ``source``."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except _Duplicate as e:
        raise error(f"{source}: key {short(e.key)} appears twice{_json_line(text, e.key)}") from None
    except json.JSONDecodeError as e:
        raise error(f"{source}: invalid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise error(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # NaN/Infinity, an integer past Python's digit limit
        raise error(f"{source}: {str(e).splitlines()[0][:120]}") from None
    check_shape(value, source=source, error=error)
    return value


def _json_line(text: str, key: str) -> str:
    """' (line N)' of the second occurrence of ``"key":`` in ``text`` (best effort)."""
    hits = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    return f" (line {text.count(chr(10), 0, hits[1]) + 1})" if len(hits) > 1 else ""


def load_json(path: str | os.PathLike, *, limit: int, error: ErrorKind, what: str) -> Any:
    """A bounded, validated JSON file (see the module docstring)."""
    return parse_json(read_text(path, limit=limit, error=error, what=what), source=str(path), error=error)


def load_json_object(path: str | os.PathLike, *, limit: int, error: ErrorKind, what: str) -> dict[str, Any]:
    """:func:`load_json` of a file whose top level must be an object."""
    value = load_json(path, limit=limit, error=error, what=what)
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object at the top level, found {_kind(value)}")
    return value


# --------------------------------------------------------------------------- YAML

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YamlDuplicate(Exception):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line


class _Loader(_BaseLoader):
    """Safe loading (libyaml's parser when present) that refuses a key given twice in a mapping
    (merge keys ``<<`` excepted: overriding a merged key is what they are for)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise _YamlDuplicate(key_node.value, key_node.start_mark.line + 1)
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, *, source: str, error: ErrorKind, text_if_invalid: bool = False) -> Any:
    """Safe YAML with duplicate keys refused and nesting/expansion bounded (module docstring).
    ``text_if_invalid``: text that is not YAML is its own value (a command-line override)."""
    try:
        value = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except _YamlDuplicate as e:
        raise error(f"{source}: key {short(e.key)} appears twice (line {e.line})") from None
    except yaml.YAMLError as e:
        if text_if_invalid:
            return text
        raise error(f"{source}: invalid YAML ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise error(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    check_shape(value, source=source, error=error)
    return value


def load_yaml(path: str | os.PathLike, *, limit: int, error: ErrorKind, what: str) -> Any:
    return parse_yaml(read_text(path, limit=limit, error=error, what=what), source=str(path), error=error)


# --------------------------------------------------------------------------- shape


def check_shape(value: Any, *, source: str, error: ErrorKind) -> None:
    """Refuse a value nested deeper than ``MAX_DEPTH`` or holding more than ``MAX_VALUES`` values,
    counting a shared (aliased) container once per place it appears. Iterative, and it stops at
    the first excess, so an alias bomb costs at most ``MAX_VALUES`` steps."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise error(
                f"{source}: holds more than {MAX_VALUES:,} values (YAML aliases that expand without bound?)"
            )
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise error(f"{source}: nested deeper than {MAX_DEPTH} levels")
            items = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in items)


# --------------------------------------------------------------------------- fields


_ABSENT = object()


class Fields:
    """Typed access to a parsed JSON object, each mistake one line naming the file and the field.

    >>> f = Fields(meta, source="run/checkpoints/step-10/meta.json", error=CheckpointError)
    >>> step = f.integer("step", minimum=0)
    """

    def __init__(self, obj: Any, *, source: str, error: ErrorKind, prefix: str = "") -> None:
        if not isinstance(obj, dict):
            raise error(
                f"{source}: {prefix.rstrip('.') or 'the top level'} must be an object, found {_kind(obj)}"
            )
        self.obj, self.source, self.error, self.prefix = obj, source, error, prefix

    def _fail(self, key: str, expected: str, value: Any) -> VitDistError:
        return self.error(f"{self.source}: {self.prefix}{key} must be {expected}, found {short(value)}")

    def has(self, key: str) -> bool:
        return key in self.obj

    def _get(self, key: str, required: bool) -> Any:
        """The value, or ``_ABSENT`` when an optional field is missing or null."""
        if key not in self.obj:
            if required:
                raise self.error(f"{self.source}: {self.prefix}{key} is missing")
            return _ABSENT
        if self.obj[key] is None and not required:
            return _ABSENT
        return self.obj[key]

    def integer(
        self,
        key: str,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        required: bool = True,
        default: int | None = None,
    ) -> Any:
        v = self._get(key, required)
        if v is _ABSENT:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._fail(key, "an integer", v)
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            raise self._fail(key, _range("an integer", minimum, maximum), v)
        return v

    def number(
        self,
        key: str,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        required: bool = True,
        default: float | None = None,
    ) -> Any:
        v = self._get(key, required)
        if v is _ABSENT:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self._fail(key, "a finite number", v)
        if above is not None and not v > above:
            raise self._fail(key, f"a number above {above}", v)
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            raise self._fail(key, _range("a number", minimum, maximum), v)
        return float(v)

    def text(
        self, key: str, *, required: bool = True, default: str | None = None, max_len: int = 4096
    ) -> Any:
        v = self._get(key, required)
        if v is _ABSENT:
            return default
        if not isinstance(v, str) or len(v) > max_len:
            raise self._fail(key, f"a string of at most {max_len} characters", v)
        return v

    def flag(self, key: str, *, required: bool = True, default: bool | None = None) -> Any:
        v = self._get(key, required)
        if v is _ABSENT:
            return default
        if not isinstance(v, bool):
            raise self._fail(key, "true or false", v)
        return v

    def texts(self, key: str, *, required: bool = True, max_len: int = 1024) -> Any:
        v = self._get(key, required)
        if v is _ABSENT:
            return None
        if not isinstance(v, list) or not all(isinstance(s, str) and len(s) <= max_len for s in v):
            raise self._fail(key, "a list of strings", v)
        return v

    def numbers(
        self, key: str, *, count: int | None = None, required: bool = True, positive: bool = False
    ) -> Any:
        v = self._get(key, required)
        if v is _ABSENT:
            return None
        ok = isinstance(v, list) and all(
            not isinstance(x, bool)
            and isinstance(x, (int, float))
            and math.isfinite(x)
            and (x > 0 or not positive)
            for x in v
        )
        if not ok or (count is not None and len(v) != count):
            what = f"a list of {count if count is not None else ''} finite{' positive' if positive else ''} numbers"
            raise self._fail(key, " ".join(what.split()), v)
        return [float(x) for x in v]

    def array(self, key: str, *, required: bool = True) -> Any:
        v = self._get(key, required)
        if v is _ABSENT:
            return None
        if not isinstance(v, list):
            raise self._fail(key, "a list", v)
        return v

    def section(self, key: str, *, required: bool = True) -> Fields | None:
        v = self._get(key, required)
        if v is _ABSENT:
            return None
        return Fields(v, source=self.source, error=self.error, prefix=f"{self.prefix}{key}.")


def _range(kind: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    return f"{kind} >= {lo}" if lo is not None else f"{kind} <= {hi}"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def _size(n: int) -> str:
    return (
        f"{n // MIB} MiB"
        if n >= MIB and n % MIB == 0
        else f"{n // KIB} KiB"
        if n % KIB == 0
        else f"{n} bytes"
    )
