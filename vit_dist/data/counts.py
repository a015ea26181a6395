"""Per-shard sample counts: checked before any epoch is planned, and flagged when a shard turns
out to hold more samples than its count says.

Exact epochs trust the counts of ``dataset.json`` (``meta.py``) to cut an epoch into equal
streams without reading the shards first, so a wrong count is a wrong epoch:

* a negative or non-integer count (``-5``, ``2.5``, ``"abc"``, ``true``) makes no plan at all;
  :func:`check_index_counts` refuses it when the index is read, with a :class:`DataError`
  naming the index, the split and the shard (the entry points exit 3 with that line), and
  :func:`check_sizes` refuses it again where a plan is built, whatever the sizes came from;
* a count smaller than what the shard holds would make the reader stop at the count and leave
  the rest unread, every epoch. The reader cannot know the true number without reading the
  whole shard, but it sees the first sample past the count when it stops there; it then calls
  :func:`note_uncounted`, which logs one warning per shard and process and counts such shards,
  so the loss of data is never silent. (Too large a count is the reader's own business: the
  missing samples become bad samples, see ``tar_reader.py``.)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..core.errors import DataError
from ..core.files import short

log = logging.getLogger("vit_dist.data")

MAX_COUNT = 2**40  # samples in one shard: far past any real shard, far below an overflow

_FIX = "correct it in dataset.json or rewrite the shards (python -m vit_dist.data.shards)"

# Shards found holding more samples than their count, in this process: url -> the count.
_uncounted: dict[str, int] = {}


def count_problem(value: Any) -> str | None:
    """Why ``value`` is not a shard sample count (a whole number >= 0), or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "not a whole number"
    if value < 0:
        return "negative"
    if value > MAX_COUNT:
        return f"more than the {MAX_COUNT:,} samples a shard may hold"
    return None


def check_count(value: Any, *, shard: str, where: str | os.PathLike) -> int:
    """``value`` as a sample count, or a one-line :class:`DataError` naming ``shard`` and ``where``
    (the index file, or the place the count came from)."""
    problem = count_problem(value)
    if problem is not None:
        raise DataError(
            f"{where}: shard {shard!r} has num_samples={short(value)}, which is {problem}: {_FIX}"
        )
    return value


def check_index_counts(meta: dict[str, Any], path: str | os.PathLike) -> None:
    """Check every shard count of a loaded ``dataset.json`` (``path`` names it in the error).

    Meant for ``meta.read_meta``, right after its format check, so no caller ever sees a
    negative or fractional count. Entries that are not mappings are left to the caller's own
    checks (``meta.shard_file``)."""
    for split, entry in sorted(meta.get("splits", {}).items()):
        shards = entry.get("shards", []) if isinstance(entry, dict) else []
        for i, shard in enumerate(shards if isinstance(shards, list) else []):
            if not isinstance(shard, dict):
                continue
            name = shard.get("name", f"#{i}")
            if "num_samples" not in shard:
                raise DataError(f"{path}: shard {name!r} of split {split!r} has no num_samples: {_FIX}")
            check_count(shard["num_samples"], shard=name, where=f"{path} (split {split!r})")


def check_sizes(sizes: list[Any]) -> None:
    """Refuse per-shard sizes a plan cannot use (negative, not whole numbers); ``sizes[i]`` belongs
    to the ``i``-th shard of the spec. The last line of defence before an epoch is planned: an
    index checked by :func:`check_index_counts` never gets here with a bad count."""
    for i, size in enumerate(sizes):
        problem = count_problem(size)
        if problem is not None:
            raise DataError(
                f"shard {i} of the spec (counting from 0) has a sample count of {short(size)}, which is "
                f"{problem}: {_FIX}"
            )


def note_uncounted(url: str, count: int) -> bool:
    """Record that shard ``url`` holds more samples than its ``count``; the first time per shard
    (in this process) log a warning naming it. Returns whether this was the first time.

    The reader calls this when it stops at a shard's count and the shard goes on: the samples
    after the count are not read in any epoch, since the plan only knows ``count`` of them.
    """
    if url in _uncounted:
        return False
    _uncounted[url] = count
    log.warning(
        "shard %s holds more samples than the %d its dataset.json lists; those after the first %d are "
        "never read (shards with too small a count in this process: %d): %s",
        url,
        count,
        count,
        len(_uncounted),
        _FIX,
    )
    return True


def uncounted_shards() -> dict[str, int]:
    """The shards this process found holding more samples than their count (url -> count)."""
    return dict(_uncounted)
