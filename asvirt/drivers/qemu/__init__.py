"""The QEMU hypervisor driver family: ``qemu:///embed?root=DIR`` in this process, and the
daemons that serve ``qemu:///system``, ``qemu:///session``, ``qemu+unix://`` and ``qemu+ssh://``.

Light on purpose: a client of a daemon loads the remote driver only, never the QEMU driver
(nor trio, which it runs on), so that it runs under asyncio as well as under trio.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from .. import registry

if TYPE_CHECKING:
    from ...config import Config
    from ...uri import ConnectURI
    from ..base import ClientDriver


@contextlib.asynccontextmanager
async def open_qemu(
    uri: ConnectURI, config: Config | None, client: object
) -> AsyncIterator[ClientDriver]:
    """The client driver for ``uri``: this process's node for an embed root, else the
    remote driver to the daemon that serves the URI."""
    if uri.path != "/embed" or uri.transport is not None or uri.host:
        from ..remote.client import open_remote

        async with open_remote(uri, config, client) as remote:
            yield remote
        return
    registry.require_trio(uri)
    from .driver import open_embedded

    async with open_embedded(uri, config, client) as local:
        yield local


registry.register("qemu", open_qemu, examples=("qemu:///embed?root=DIR",))
