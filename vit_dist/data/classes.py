"""Whether two sides of a run agree on the classes: the training data and the validation data,
or a checkpoint and the data it is evaluated on.

A label is an index into the class list, so a val set with more classes than the model's head
fails at the first evaluation (``Target 10 is out of bounds``, after the training is lost), and
one whose names are in another order is scored silently wrong. Both are refused before the first
step, by name where both sides know the names, by count otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.files import short


def class_mismatch(
    expected: Sequence[str] | None,
    expected_count: int,
    found: Sequence[str] | None,
    found_count: int,
) -> str | None:
    """How the ``found`` classes differ from the ``expected`` ones (a phrase), or None."""
    if found_count != expected_count:
        return f"{found_count} classes where {expected_count} are expected"
    if expected is None or found is None or list(expected) == list(found):
        return None
    if sorted(expected) == sorted(found):
        return "the same class names in another order (labels are indices: they would be scored against the wrong classes)"
    first = next(i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
    return f"class {first} is {short(found[first])} where {short(expected[first])} is expected"
