"""Words a user types: booleans, ``key=value`` options of the commands, did-you-mean.

One semantics for each, shared by the config, the entry points and the environment variables
the package reads. No torch.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable

from .errors import ConfigError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
_OPTION_KEY = re.compile(r"[A-Za-z_][\w.]*")


def parse_bool(key: str, value: str | bool) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case) -> bool; else ConfigError."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise ConfigError(f"{key}={value!r}: expected true or false")


def env_flag(name: str, default: bool = False) -> bool:
    """An environment variable read with :func:`parse_bool`; unset or empty gives ``default``."""
    value = os.environ.get(name, "").strip()
    return parse_bool(name, value) if value else default


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``options``, or ``""`` when none is close."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def split_options(
    items: Iterable[str], keys: tuple[str, ...], *, others: str = "error"
) -> tuple[dict[str, str], list[str]]:
    """``['checkpoint=x', 'a.jpg']`` -> ``({'checkpoint': 'x'}, ['a.jpg'])``.

    An item is an option when the text before its first ``=`` is a plain (dotted) word and the
    item is not the name of an existing file. Options named in ``keys`` are returned in the
    dict; what happens to everything else depends on ``others``:

    - ``"error"``: nothing else is accepted (ConfigError naming the valid options);
    - ``"files"``: other items are positional (file names); an option not in ``keys`` is a
      mistake, most likely a typo, reported with the valid options;
    - ``"overrides"``: other options are returned in order, for the config to validate.
    """
    if others not in ("error", "files", "overrides"):
        raise ValueError(f"others must be 'error', 'files' or 'overrides', not {others!r}")
    valid = ", ".join(f"{k}=" for k in keys)
    opts: dict[str, str] = {}
    rest: list[str] = []
    for item in items:
        key, eq, value = item.partition("=")
        is_option = bool(eq) and _OPTION_KEY.fullmatch(key) is not None and not os.path.exists(item)
        if is_option and key in keys:
            opts[key] = value
        elif others == "overrides" or (others == "files" and not is_option):
            rest.append(item)
        elif is_option:
            raise ConfigError(f"unknown option {key!r}{did_you_mean(key, keys)}; options: {valid}")
        else:
            raise ConfigError(f"unexpected argument {item!r}; options: {valid}")
    return opts, rest
