"""Errors out of the drivers' nurseries reach callers as themselves.

A failure inside a trio nursery (strict exception groups) comes out wrapped in an exception
group; callers of the API must see an :class:`~asvirt.errors.AsvirtError` (with its code),
not a group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio


@contextlib.contextmanager
def unwrap_single_error() -> Iterator[None]:
    """Around a nursery whose body alone can fail (its tasks only watch or report): a group
    holding one error, besides cancellations, is re-raised as that error."""
    try:
        yield
    except BaseExceptionGroup as group:
        errors = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        if len(errors) == 1:
            raise errors[0] from None
        raise


__all__ = ["unwrap_single_error"]
