"""A pytest plugin (loaded by conftest.py): the reason and place of a skip in a trio test.

pytest-trio runs each test in a nursery, so a ``pytest.skip(reason)`` in a test (or a trio
fixture) reaches it inside an exception group; it then raises a bare ``pytest.skip()`` (or
``pytest.xfail()``) in its place, with no reason and pytest's own frame for a location:
``pytest -rs`` said ``SKIPPED [1] .../_pytest/python.py:187: Skipped``. This gives pytest the
test's own exception back, with its reason and its line.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

_OUTCOMES = (pytest.skip.Exception, pytest.xfail.Exception)


def _lone_leaf(exc: BaseException | None) -> BaseException | None:
    """The one exception inside (nested) exception groups, or None if there are several."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    try:
        return (yield)
    except _OUTCOMES as bare:
        # pytest-trio raises its bare outcome while handling the group it replaces.
        leaf = _lone_leaf(bare.__context__)
        if type(leaf) is type(bare) and isinstance(bare.__context__, BaseExceptionGroup):
            raise leaf from None
        raise
