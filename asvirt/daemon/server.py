"""The daemon's server: one node, its listening sockets, a session per client."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import trio

from .. import fsutil
from ..config import Config, DaemonSettings
from ..drivers.qemu.driver import open_qemu_node
from ..drivers.qemu.paths import EmbedPaths
from ..errors import AsvirtError, SystemCallError
from ..events import EventKind, LifecycleEvent
from ..hypervisor.node import Node
from ..log import get_logger
from ..states import DomainState
from .layout import Layout
from .session import Limits, Peer, Session

log = get_logger("asvirt.daemon")


def bind_socket(path: Path, mode: int) -> socket.socket:
    """A listening socket at ``path`` with ``mode``, never readable by others before that."""
    old = os.umask(0o177)
    try:
        sock = fsutil.bind_unix_listener(path, backlog=128)
    except OSError as err:
        raise SystemCallError.from_oserror(err, "listen on", path) from None
    finally:
        os.umask(old)
    os.chmod(path, mode)
    return sock


class Server:
    """Serves one node on its sockets until told to stop."""

    def __init__(
        self,
        layout: Layout,
        *,
        settings: DaemonSettings,
        node_config: Config | None = None,
        shutdown_vms: bool = False,
    ) -> None:
        self.layout = layout
        self.settings = settings
        self.node_config = node_config
        self.shutdown_vms = shutdown_vms
        self.limits = Limits(
            max_message=settings.max_message,
            max_backlog=settings.max_backlog,
            max_workers=settings.max_workers,
            keepalive_interval=settings.keepalive_interval,
            keepalive_count=settings.keepalive_count,
        )
        self._stop = trio.Event()

    def stop(self) -> None:
        """Stop serving: clients are disconnected, VMs keep running (see shutdown_vms)."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the node, listen, serve; returns once stopped and the node is closed."""
        paths = EmbedPaths(self.layout.root, self.layout.tops)
        lease = await open_qemu_node(paths, self.node_config)
        node = lease.node
        listeners: list[tuple[socket.socket, bool, Path]] = []
        try:
            for path in (self.layout.socket, self.layout.socket_ro):
                if path is not None and not path.parent.exists():
                    path.parent.mkdir(parents=True, mode=0o700)
            listeners.append((bind_socket(self.layout.socket, 0o600), False, self.layout.socket))
            if self.layout.socket_ro is not None:
                ro = bind_socket(self.layout.socket_ro, 0o666)
                listeners.append((ro, True, self.layout.socket_ro))
            async with trio.open_nursery() as nursery:
                for sock, read_only, path in listeners:
                    nursery.start_soon(self._accept, node, sock, read_only, nursery)
                    log.info("listening", socket=str(path), read_only=read_only)
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for sock, _, path in listeners:
                    sock.close()
                    fsutil.remove(path)
                if self.shutdown_vms:
                    await shutdown_all(node, self.settings.shutdown_timeout)
                await lease.release()
            log.info("stopped")

    async def _accept(
        self, node: Node, sock: socket.socket, read_only: bool, nursery: trio.Nursery
    ) -> None:
        listener = trio.socket.from_stdlib_socket(sock)
        while True:
            try:
                conn, _ = await listener.accept()
            except OSError as err:  # EMFILE and friends: wait, do not spin
                log.warning("cannot accept a client", error=str(err))
                await trio.sleep(0.1)
                continue
            peer = Peer.of(conn)  # type: ignore[arg-type]
            stream = trio.SocketStream(conn)
            session = Session(node, stream, read_only=read_only, peer=peer, limits=self.limits)
            nursery.start_soon(_serve, session)


async def _serve(session: Session) -> None:
    """Serve one client; a bug in its session ends its connection, never the daemon."""
    try:
        await session.run()
    except Exception:
        log.exception("client session failed", client=session.id)


async def shutdown_all(node: Node, timeout: float) -> None:
    """Shut every running domain down (ACPI), destroying what is still up after ``timeout``
    seconds — libvirt-guests' shutdown."""
    domains = node.domains
    refs = await domains.list_all_domains(active=True, persistent=None)
    if not refs:
        return
    log.info("shutting domains down", count=len(refs), timeout_s=timeout)
    async with node.bus.subscribe(kinds=[EventKind.LIFECYCLE]) as events:
        for ref in refs:
            with contextlib.suppress(AsvirtError):
                await domains.domain_shutdown(ref.uuid)
        left = {ref.uuid for ref in refs}
        with trio.move_on_after(timeout):
            while left:
                left = {u for u in left if await _running(node, u)}
                if not left:
                    break
                ev = await events.receive()
                if ev.type is LifecycleEvent.STOPPED:
                    left.discard(ev.uuid)
    for uuid in left:
        log.warning("domain did not shut down in time; destroying it", uuid=uuid)
        with contextlib.suppress(AsvirtError):
            await domains.domain_destroy(uuid)


async def _running(node: Node, uuid: str) -> bool:
    try:
        state, _ = await node.domains.domain_state(uuid)
    except AsvirtError:
        return False
    return state is not DomainState.SHUTOFF


async def serve_until_signalled(server: Server) -> None:
    """Run ``server`` until SIGTERM or SIGINT, then stop it cleanly."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    server.stop()
                    return

            nursery.start_soon(watch)
            await server.run()
            nursery.cancel_scope.cancel()


__all__ = ["Server", "bind_socket", "serve_until_signalled", "shutdown_all"]
