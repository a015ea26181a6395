"""The one exception type of the data layer.

Every user-facing data failure (a shard spec that matches nothing, a missing path, too few
shards for the ranks x workers, too many bad samples, a resume position that does not fit)
raises :class:`DataError` with a one-line message naming the path, spec or setting at fault.
It subclasses ``ValueError`` so that callers validating configuration can catch both alike.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data problem the user can fix; the message names the path, spec or setting."""
