"""The daemon's server: one node, its listening sockets, a session per client."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import trio

from .. import fsutil
from ..config import Config, DaemonSettings
from ..drivers.local import invoke
from ..drivers.network.model import DEFAULT_NETWORK_XML
from ..drivers.qemu.driver import open_qemu_node
from ..drivers.qemu.paths import EmbedPaths
from ..errors import AsvirtError, NoConnectError, SystemCallError
from ..events import EventKind, LifecycleEvent
from ..hypervisor.node import Node
from ..log import get_logger
from ..states import DomainState
from .layout import Layout
from .session import Limits, Peer, Readers, Session

log = get_logger("asvirt.daemon")


#: The first descriptor systemd passes (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3


def systemd_sockets() -> dict[str, socket.socket]:
    """Listening sockets systemd passed us (socket activation), by name.

    ``LISTEN_FDNAMES`` names them (``FileDescriptorName=`` in the socket unit:
    ``asvirt-sock`` and ``asvirt-sock-ro``); unnamed ones are read-write first, then
    read-only. Empty when the daemon was not socket-activated.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    found: dict[str, socket.socket] = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] not in ("", "unknown") else ""
        name = name or ("asvirt-sock" if i == 0 else "asvirt-sock-ro")
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        found[name] = sock
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)  # not for our children (QEMU)
    return found


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
        define_defaults: bool = False,
        metrics: tuple[str, int] | None = None,
    ) -> None:
        self.layout = layout
        self.settings = settings
        #: Where to serve Prometheus metrics (host, port), or None.
        self.metrics = metrics
        #: Where metrics are served once running (the bound addresses).
        self.metrics_addresses: list[tuple[str, int]] = []
        self._clients = 0
        self.node_config = node_config
        self.shutdown_vms = shutdown_vms
        #: On its very first start, define what distributions define for the system daemon.
        self.define_defaults = define_defaults
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
        try:
            # A fresh home may lack the XDG directories the session's own go under.
            for directory in (self.layout.root, *(top for _, top in self.layout.tops)):
                fsutil.make_parents(directory)
        except OSError as err:
            raise NoConnectError(f"cannot create '{err.filename}': {err.strerror}") from None
        # The daemon is what starts autostart domains (and networks, pools) after a boot.
        lease = await open_qemu_node(paths, self.node_config, autostart=True)
        node = lease.node
        if self.define_defaults:
            await define_defaults(node, paths.top("lib"))
        listeners: list[tuple[socket.socket, bool, Path | None]] = []
        readers = Readers(self.settings.busy_poll_us / 1e6)
        try:
            activated = systemd_sockets()
            if activated:
                # systemd made (and keeps) the socket files: use them, never unlink them.
                for name, sock in activated.items():
                    listeners.append((sock, name.endswith("-ro"), None))
            else:
                for path in (self.layout.socket, self.layout.socket_ro):
                    if path is not None and not path.parent.exists():
                        fsutil.make_parents(path.parent)
                        path.parent.mkdir(mode=0o700)
                rw = bind_socket(self.layout.socket, 0o600)
                listeners.append((rw, False, self.layout.socket))
                if self.layout.socket_ro is not None:
                    ro = bind_socket(self.layout.socket_ro, 0o666)
                    listeners.append((ro, True, self.layout.socket_ro))
            async with trio.open_nursery() as nursery:
                if readers.busy_poll:
                    nursery.start_soon(readers.keep_polling)
                for sock, read_only, path in listeners:
                    nursery.start_soon(self._accept, node, sock, read_only, readers, nursery)
                    where = str(path) if path is not None else "systemd socket"
                    log.info("listening", socket=where, read_only=read_only)
                if self.metrics is not None:
                    from .metrics import serve_metrics  # prometheus_client: only when asked

                    self.metrics_addresses = await nursery.start(
                        functools.partial(
                            serve_metrics, node, self.metrics, clients=lambda: self._clients
                        )
                    )
                task_status.started()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            readers.close()
            with trio.CancelScope(shield=True):
                for sock, _, path in listeners:
                    sock.close()
                    if path is not None:
                        fsutil.remove(path)
                if self.shutdown_vms:
                    await shutdown_all(node, self.settings.shutdown_timeout)
                await lease.release()
            log.info("stopped")

    async def _accept(
        self,
        node: Node,
        sock: socket.socket,
        read_only: bool,
        readers: Readers,
        nursery: trio.Nursery,
    ) -> None:
        # Accepted here, not through a trio socket: the session keeps the plain socket, to
        # send on it directly (see Session.send).
        sock.setblocking(False)
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue  # another accept took it
            except OSError as err:  # EMFILE and friends: wait, do not spin
                log.warning("cannot accept a client", error=str(err))
                await trio.sleep(0.1)
                continue
            conn.setblocking(False)
            peer = Peer.of(conn)
            session = Session(
                node, conn, read_only=read_only, peer=peer, limits=self.limits, readers=readers
            )
            nursery.start_soon(self._serve_counted, session)

    async def _serve_counted(self, session: Session) -> None:
        self._clients += 1
        try:
            await _serve(session)
        finally:
            self._clients -= 1


async def _serve(session: Session) -> None:
    """Serve one client; a bug in its session ends its connection, never the daemon."""
    try:
        await session.run()
    except Exception:
        log.exception("client session failed", client=session.id)


def default_pool_xml(images: Path) -> str:
    """libvirt's ``default`` storage pool: a directory of images under the node's lib."""
    return (
        "<pool type='dir'><name>default</name>"
        f"<target><path>{escape(str(images))}</path></target></pool>"
    )


async def define_defaults(node: Node, lib: Path) -> None:
    """Once in the node's life: libvirt's ``default`` NAT network and ``default`` storage
    pool (``LIB/images``), autostarted and started, as the distributions' libvirt packages
    define them. Removing them later is the admin's choice, so a marker (``LIB/defaults-
    defined``), not their presence, says it was done."""
    marker = lib / "defaults-defined"
    if await trio.Path(marker).exists():
        return

    async def call(method: str, **params: object) -> Any:
        return await invoke(node, method, params, client=None)

    if node.network is not None:
        try:
            net = await call("network_define_xml", xml=DEFAULT_NETWORK_XML)
            await call("network_set_autostart", uuid=net.uuid, autostart=True)
            if not await call("network_is_active", uuid=net.uuid):
                await call("network_create", uuid=net.uuid)
        except AsvirtError as err:
            # A host without virbr0's subnet free, or without dnsmasq: the daemon serves.
            log.error("cannot set up the default network", error=str(err))
    if node.storage is not None:
        try:
            pool = await call("storage_pool_define_xml", xml=default_pool_xml(lib / "images"))
            if not await call("storage_pool_is_active", uuid=pool.uuid):
                await call("storage_pool_build", uuid=pool.uuid)
                await call("storage_pool_create", uuid=pool.uuid)
            await call("storage_pool_set_autostart", uuid=pool.uuid, autostart=True)
        except AsvirtError as err:
            log.error("cannot set up the default storage pool", error=str(err))
    fsutil.atomic_write(marker, b"")


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
