"""Whether two sides of a run agree on the classes: the training data and the validation data,
or a checkpoint and the data it is evaluated on.

A label is an index into the class list, so a val set with more classes than the model's head
fails at the first evaluation (``Target 10 is out of bounds``, after the training is lost), and
one whose names are in another order is scored silently wrong. Both are refused before the first
step, by name where both sides know the names, by count otherwise, unless the user states how
the val classes map onto the expected ones (``data.val_class_map``: by name, or a JSON file from
val names to expected names): then each val label is replaced by its expected index.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.errors import ConfigError, DataError
from ..core.files import load_json_object, short

MAP_LIMIT = 64 * 2**20  # bytes of a class map file (ImageNet-21k's names fit in a few MB)


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


def class_map(
    expected: Sequence[str] | None,
    found: Sequence[str] | None,
    how: str,
    *,
    expected_what: str,
    found_what: str,
) -> list[int]:
    """For each ``found`` class (index), the index of the ``expected`` class it is: ``how`` is
    ``names`` (the same name) or a JSON file ``{found name: expected name}``. A class map file
    that cannot be used is a ConfigError naming it; a found class with no expected counterpart
    is a DataError naming it."""
    option = f"data.val_class_map={short(how)}"
    if expected is None or found is None:
        side = expected_what if expected is None else found_what
        raise DataError(f"{option}: {side} names no classes (dataset.json 'classes') to map by")
    index = {name: i for i, name in enumerate(expected)}
    if how == "names":
        pairs = {name: name for name in found}
    else:
        pairs = load_json_object(how, limit=MAP_LIMIT, error=ConfigError, what="class map")
        wrong = next((k for k, v in pairs.items() if not isinstance(v, str)), None)
        if wrong is not None:
            raise ConfigError(
                f"{how}: a class map's values are class names; {short(wrong)} maps to {short(pairs[wrong])}"
            )
        missing = [name for name in found if name not in pairs]
        if missing:
            raise ConfigError(
                f"{how}: no entry for the class {short(missing[0])} of {found_what} "
                f"({len(missing)} of its {len(found)} classes have none)"
            )
    unknown = [name for name in found if pairs[name] not in index]
    if unknown:
        target = "" if how == "names" else f" (mapped to {short(pairs[unknown[0]])})"
        raise DataError(
            f"{option}: the class {short(unknown[0])}{target} of {found_what} is not one of the "
            f"{len(expected)} classes of {expected_what} ({len(unknown)} such)"
        )
    return [index[pairs[name]] for name in found]
