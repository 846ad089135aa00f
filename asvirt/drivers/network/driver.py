"""The network driver of a QEMU node: networks made of host bridges, dnsmasq and nftables.

libvirt's ``bridge_driver.c``, step by step. Starting a network (every mode but ``bridge``,
which uses an existing host bridge and creates nothing):

1. checks that its bridge name is free and its subnets are not already on the host;
2. writes its *state file* (``ROOT/run/network/NAME.state``): what it is about to create;
3. creates the bridge with its MAC, MTU, STP settings and addresses (netlink), marked as
   this root's (:mod:`.bridge`);
4. turns on IP forwarding where the mode forwards (as libvirt, it is never turned off: other
   users of the host may rely on it);
5. installs the network's nftables table in one transaction (:mod:`.firewall`);
6. starts dnsmasq (:mod:`.dnsmasq`) and records its pid; a task in the node's nursery
   watches it and starts it again, with a growing delay, should it die;
7. records the network as running.

Stopping undoes exactly that, in reverse, and removes the state file last. Anything that
fails during a start undoes what was done before it.

Because the intent is written before each step, a supervisor killed at any moment leaves a
state file naming everything that may exist. The next process to open the root reads it:
a network that was running is re-attached (its dnsmasq adopted, or restarted if it died
meanwhile; its table restored if it vanished; if its bridge vanished, the network is taken
down and reported stopped); a start or stop that was under way is finished by taking the
network down. Then networks marked autostart are started.

Files: ``ROOT/etc/network/NAME.xml`` (persistent definitions), ``NAME.autostart`` beside them,
``ROOT/run/network/NAME.{state,conf,pid,leasescript}``, ``ROOT/lib/network/NAME.leases``
(the lease database), ``ROOT/log/network/NAME.log`` (dnsmasq's log).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
from pathlib import Path

import trio

from ... import fsutil
from ...conf.devices import Interface
from ...conf.domain import DomainDef
from ...config import NetworkConfig
from ...errors import (
    AsvirtError,
    OperationFailedError,
    OperationInvalidError,
    OperationUnsupportedError,
    SystemCallError,
    XMLError,
)
from ...events import EventBus, NetworkLifecycleEvent
from ...log import get_logger
from ..base import IPAddrType, NetworkDHCPLease
from ..groups import unwrap_single_error
from . import bridge, dnsmasq, firewall, leases, tap
from .core import NetworkDriverCore, NetworkObj
from .model import NetworkDef, fill_defaults, parse_network_xml
from .paths import NetworkPaths

log = get_logger("asvirt.network")

STATE_FORMAT = 1
STARTING, RUNNING, STOPPING = "starting", "running", "stopping"


@dataclasses.dataclass
class NetworkState:
    """The state file: what a start has made (or is about to make) for one network."""

    name: str
    uuid: str
    phase: str
    live_xml: str
    #: The alias marking links as this root's network's.
    owner: str
    #: The bridge this start creates (None: forward mode 'bridge', nothing is created).
    bridge: str | None = None
    #: The MAC it is created with: marks it as ours until its alias is set (see
    #: :mod:`.bridge`).
    bridge_mac: str | None = None
    nft_table: str | None = None
    dnsmasq_pid: int | None = None
    dnsmasq_start_time: int | None = None

    def save(self, path: Path) -> None:
        """Replace the state file atomically, without fsync: what it records (a bridge, an
        nft table, a dnsmasq) lives in the running kernel, and whatever loses the page cache
        (a power cut, a kernel crash) takes all of it along. A supervisor killed at any
        point leaves the kernel, and so the file as last written, to the next one."""
        data = {"format": STATE_FORMAT, **dataclasses.asdict(self)}
        fsutil.atomic_write(path, json.dumps(data, indent=1).encode(), durable=False)

    @classmethod
    def load(cls, path: Path) -> NetworkState:
        data = json.loads(fsutil.read_nofollow(path, limit=4 * 1024 * 1024))
        if not isinstance(data, dict) or data.pop("format", None) != STATE_FORMAT:
            raise ValueError("not a network state file of a known format")
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(data) - fields or {"name", "uuid", "phase", "live_xml", "owner"} - set(data):
            raise ValueError("unexpected or missing fields")
        state = cls(**data)
        if state.phase not in (STARTING, RUNNING, STOPPING):
            raise ValueError(f"unknown phase {state.phase!r}")
        return state


class NetworkRuntime:
    """A running network: its state record and its dnsmasq watcher."""

    def __init__(self, state: NetworkState, defn: NetworkDef) -> None:
        self.state = state
        self.defn = defn
        self.pidfd: int | None = None
        self.watcher: trio.CancelScope | None = None
        self.watcher_done = trio.Event()
        self.watcher_done.set()
        #: dnsmasq restarts since the network started (for logs and tests).
        self.restarts = 0


class HostNetworkBackend:
    """Runs a node's networks on the host (see the module docstring)."""

    def __init__(
        self, root: Path, config: NetworkConfig, tops: tuple[tuple[str, Path], ...] = ()
    ) -> None:
        self.paths = NetworkPaths(root, tops)
        self.config = config
        self._root = root
        self._nursery: trio.Nursery | None = None
        self.core: NetworkDriverCore | None = None

    def owner(self, uuid: str) -> str:
        """The alias of links this root makes for network ``uuid``."""
        return f"asvirt:{self._root}:{uuid}"[:255]

    # -- define time ----------------------------------------------------------------------------

    def prepare(self, defn: NetworkDef, others: list[NetworkObj]) -> NetworkDef:
        taken = set()
        for obj in others:
            for d in (obj.persistent_def, obj.live_def):
                if d is not None and d.bridge is not None and d.creates_bridge:
                    taken.add(d.bridge)
        if defn.creates_bridge and defn.bridge is not None and defn.bridge in taken:
            raise XMLError(f"bridge name '{defn.bridge}' is already in use by another network")
        return fill_defaults(defn, taken_bridges=taken)

    async def save_config(self, obj: NetworkObj, defn: NetworkDef) -> None:
        path = self.paths.config(defn.name)
        try:
            await trio.to_thread.run_sync(fsutil.atomic_write, path, defn.to_xml().encode())
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"save network '{defn.name}' to", path
            ) from None

    async def delete_config(self, obj: NetworkObj) -> None:
        def delete() -> None:
            fsutil.remove(self.paths.config(obj.name))
            fsutil.remove(self.paths.autostart(obj.name))
            fsutil.fsync_dir(self.paths.config_dir)

        try:
            await trio.to_thread.run_sync(delete)
        except OSError as err:
            raise SystemCallError.from_oserror(err, f"remove network '{obj.name}' from") from None

    async def save_autostart(self, obj: NetworkObj, autostart: bool) -> None:
        path = self.paths.autostart(obj.name)
        try:
            if autostart:
                await trio.to_thread.run_sync(fsutil.atomic_write, path, b"")
            else:
                await trio.to_thread.run_sync(fsutil.remove, path)
        except OSError as err:
            raise SystemCallError.from_oserror(err, "set autostart of network in", path) from None

    # -- starting and stopping -----------------------------------------------------------------

    async def start(self, obj: NetworkObj, defn: NetworkDef) -> NetworkRuntime:
        state = NetworkState(
            name=defn.name,
            uuid=defn.uuid,
            phase=STARTING,
            live_xml=defn.to_xml(),
            owner=self.owner(defn.uuid),
        )
        runtime = NetworkRuntime(state, defn)
        if defn.creates_bridge:
            try:
                await trio.to_thread.run_sync(self._check_free, defn)
            except AsvirtError:
                raise
            except Exception as err:  # netlink's refusal to list links or addresses
                raise bridge.host_error(err, f"check the host for network '{defn.name}'") from None
            state.bridge, state.bridge_mac = defn.bridge, defn.mac
        if defn.creates_bridge and firewall.needs_rules(defn):
            state.nft_table = firewall.table_name(defn.uuid)
        # The intent, before anything exists: a supervisor that dies from here on leaves
        # the record of what to remove.
        self._save_state(state)
        try:
            # The table names the bridge only by name, so nft (a process of its own) runs
            # while the bridge is made and dnsmasq starts on it: all are in place before the
            # network is reported running, and no tap can join the bridge before that.
            refused: list[AsvirtError] = []
            with unwrap_single_error():
                async with trio.open_nursery() as nursery:
                    if state.nft_table is not None:
                        nursery.start_soon(self._install_rules, defn, refused, nursery)
                    if state.bridge is not None:
                        await self._create_bridge(defn, state.owner)
                    if defn.needs_dnsmasq:
                        # Its pid is recorded with the phase, just below.
                        await self._start_dnsmasq(runtime, record=False)
            if refused:
                raise refused[0]
            state.phase = RUNNING
            self._save_state(state)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._take_down(state, runtime)
            raise
        self._watch(obj, runtime)
        log.info("network started", network=defn.name, bridge=defn.bridge, mode=defn.forward_mode)
        return runtime

    async def _install_rules(
        self, defn: NetworkDef, refused: list[AsvirtError], nursery: trio.Nursery
    ) -> None:
        """The network's nft table, beside the rest of a start: a refusal is kept in
        ``refused`` (for the start to raise as itself) and cancels the rest."""
        try:
            await firewall.nft(firewall.ruleset(defn), binary=self.config.nft)
        except AsvirtError as err:
            refused.append(err)
            nursery.cancel_scope.cancel()

    async def stop(self, obj: NetworkObj) -> None:
        runtime: NetworkRuntime = obj.runtime
        runtime.state.phase = STOPPING
        self._save_state(runtime.state)
        with trio.CancelScope(shield=True):
            await self._take_down(runtime.state, runtime)
        log.info("network stopped", network=obj.name)

    async def _take_down(self, state: NetworkState, runtime: NetworkRuntime | None) -> None:
        """Remove whatever ``state`` says may exist; then the state file.

        dnsmasq is told to go first; its exit, the nft table's removal and the bridge's (the
        kernel's teardown of a bridge waits out RCU grace periods: most of a stop) are then
        awaited together, as none needs another gone first (libvirt does not even wait for
        dnsmasq). All three are gone when this returns."""
        name = state.name
        if runtime is not None and runtime.watcher is not None:
            runtime.watcher.cancel()
            await runtime.watcher_done.wait()
        pidfd = runtime.pidfd if runtime is not None else None
        if pidfd is None and state.dnsmasq_pid is not None:
            pidfd = dnsmasq.find(
                state.dnsmasq_pid, state.dnsmasq_start_time, self.paths.dnsmasq_conf(name)
            )
        if pidfd is None:
            # A start (or a restart by the watcher) cut short after it launched a dnsmasq but
            # before it recorded the pid - its supervisor killed, or the call cancelled -
            # left one only dnsmasq's own pid file names (checked to run our conf file).
            found = dnsmasq.adopt(self.paths.pid(name), self.paths.dnsmasq_conf(name))
            if found is not None:
                pidfd = found[1]
        errors: list[str] = []

        async def stop_dnsmasq(pidfd: int) -> None:
            try:
                await dnsmasq.terminate(pidfd)
            finally:
                os.close(pidfd)
                if runtime is not None:
                    runtime.pidfd = None

        async def remove_table() -> None:
            try:
                await firewall.nft(firewall.removal(state.uuid), binary=self.config.nft)
            except AsvirtError as err:
                errors.append(str(err))

        async def remove_bridge(br: str) -> None:
            try:
                await trio.to_thread.run_sync(
                    lambda: bridge.delete_link(br, owner=state.owner, mac=state.bridge_mac)
                )
            except Exception as err:
                errors.append(f"cannot delete bridge '{br}': {err}")

        with unwrap_single_error():  # only stop_dnsmasq can raise
            async with trio.open_nursery() as nursery:
                if pidfd is not None:
                    nursery.start_soon(stop_dnsmasq, pidfd)
                if state.nft_table is not None:
                    nursery.start_soon(remove_table)
                if state.bridge is not None:
                    nursery.start_soon(remove_bridge, state.bridge)
        for path in (
            self.paths.dnsmasq_conf(name),
            self.paths.pid(name),
            self.paths.lease_script(name),
            self.paths.leases(name),
            Path(str(self.paths.leases(name)) + ".lock"),
        ):
            with contextlib.suppress(OSError):
                fsutil.remove(path)
        if errors:
            # The state file stays: the next open of the root tries again.
            log.error("network not fully taken down", network=name, errors=errors)
            raise OperationFailedError(
                f"network '{name}' not fully taken down: {'; '.join(errors)}"
            )
        with contextlib.suppress(OSError):
            fsutil.remove(self.paths.state(name))

    def _check_free(self, defn: NetworkDef) -> None:
        """The bridge name is free and no subnet is already on the host (libvirt's route
        collision check): refuse before anything is changed."""
        assert defn.bridge is not None
        with bridge.netlink() as ipr:
            if bridge.link_index(ipr, defn.bridge) is not None:
                raise OperationInvalidError(
                    f"network '{defn.name}': a network interface named '{defn.bridge}' "
                    "already exists"
                )
            for addr in ipr.get_addr():
                text = addr.get_attr("IFA_ADDRESS")
                if text is None:
                    continue
                here = ipaddress.ip_interface(f"{text}/{addr['prefixlen']}")
                for ip in defn.ips:
                    if here.network.overlaps(ip.network) and not here.ip.is_link_local:
                        dev = addr.get_attr("IFA_LABEL") or f"interface #{addr['index']}"
                        raise OperationInvalidError(
                            f"network '{defn.name}': {ip.network} is already in use by {dev} "
                            f"({here})"
                        )

    async def _create_bridge(self, defn: NetworkDef, owner: str) -> None:
        assert defn.bridge is not None

        def create() -> None:
            bridge.create_bridge(
                defn.bridge or "",
                owner=owner,
                mac=defn.mac,
                mtu=defn.mtu,
                stp=defn.stp,
                delay=defn.delay,
                addresses=[ip.interface for ip in defn.ips],
            )
            self._enable_forwarding(defn)  # in the same worker thread: one hop for both

        try:
            await trio.to_thread.run_sync(create)
        except AsvirtError:
            raise  # _enable_forwarding's, already in its own words
        except Exception as err:  # an OSError, or pyroute2's NetlinkError
            raise bridge.host_error(err, f"create bridge '{defn.bridge}'") from None

    def _enable_forwarding(self, defn: NetworkDef) -> None:
        if not defn.forwarding:
            return
        try:
            if defn.ipv4() and bridge.get_sysctl("net/ipv4/ip_forward") != "1":
                bridge.set_sysctl("net/ipv4/ip_forward", "1")
            if defn.ipv6() and bridge.get_sysctl("net/ipv6/conf/all/forwarding") != "1":
                bridge.set_sysctl("net/ipv6/conf/all/forwarding", "1")
        except OSError as err:
            raise SystemCallError.from_oserror(err, "enable IP forwarding") from None

    # -- dnsmasq ---------------------------------------------------------------------------------

    async def _start_dnsmasq(self, runtime: NetworkRuntime, *, record: bool = True) -> None:
        """Launch the network's dnsmasq, its pidfd in ``runtime``; ``record``: and its pid
        in the state file (else the caller saves the state)."""
        defn, name = runtime.defn, runtime.defn.name
        paths = self.paths
        conf = dnsmasq.config(
            defn,
            pid_file=paths.pid(name),
            lease_script=paths.lease_script(name),
            log_file=paths.log(name),
        )
        script = dnsmasq.lease_script(dnsmasq.python(), dnsmasq.helper_path(), paths.leases(name))
        try:
            fsutil.atomic_write(paths.dnsmasq_conf(name), conf.encode(), durable=False)
            fsutil.atomic_write(
                paths.lease_script(name), script.encode(), mode=0o700, durable=False
            )
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"write dnsmasq files of network '{name}'"
            ) from None
        # Shielded (dnsmasq's own timeout bounds it): a launch cancelled half-way (a failed
        # nft beside it, a caller gone) would leave a dnsmasq nobody holds; finished, its
        # pidfd is in ``runtime`` for the take-down that follows.
        with trio.CancelScope(shield=True):
            proc, pidfd = await dnsmasq.launch(
                self.config.dnsmasq,
                conf_file=paths.dnsmasq_conf(name),
                pid_file=paths.pid(name),
                log_file=paths.log(name),
                timeout=self.config.dnsmasq_start_timeout,
            )
        runtime.pidfd = pidfd
        runtime.state.dnsmasq_pid = proc.pid
        runtime.state.dnsmasq_start_time = proc.start_time
        if record:
            self._save_state(runtime.state)

    def _watch(self, obj: NetworkObj, runtime: NetworkRuntime) -> None:
        if runtime.pidfd is None or self._nursery is None:
            return
        runtime.watcher = trio.CancelScope()
        runtime.watcher_done = trio.Event()
        self._nursery.start_soon(self._watch_dnsmasq, obj, runtime)

    async def _watch_dnsmasq(self, obj: NetworkObj, runtime: NetworkRuntime) -> None:
        """Start dnsmasq again whenever it dies, until the network stops or the node closes."""
        assert runtime.watcher is not None
        name = runtime.defn.name
        try:
            with runtime.watcher:
                while True:
                    assert runtime.pidfd is not None
                    await dnsmasq.wait_exit(runtime.pidfd)
                    os.close(runtime.pidfd)
                    runtime.pidfd = None
                    log.error(
                        "dnsmasq died; starting it again",
                        network=name,
                        pid=runtime.state.dnsmasq_pid,
                    )
                    delay = self.config.dnsmasq_restart_delay
                    while runtime.pidfd is None:
                        await trio.sleep(delay)
                        try:
                            await self._start_dnsmasq(runtime)
                        except AsvirtError as err:
                            delay = min(delay * 2, self.config.dnsmasq_restart_max_delay)
                            log.error(
                                "cannot restart dnsmasq",
                                network=name,
                                error=str(err),
                                retry_in=delay,
                            )
                    runtime.restarts += 1
                    log.warning(
                        "dnsmasq restarted",
                        network=name,
                        pid=runtime.state.dnsmasq_pid,
                        restarts=runtime.restarts,
                    )
        finally:
            runtime.watcher_done.set()

    async def leases(self, obj: NetworkObj) -> list[NetworkDHCPLease]:
        defn = obj.live_def
        assert defn is not None
        found = await trio.to_thread.run_sync(
            leases.current_leases, str(self.paths.leases(obj.name))
        )
        out = []
        for lease in found:
            try:
                addr = ipaddress.ip_address(lease["ip"])
            except ValueError:
                continue
            prefix = next((ip.prefix for ip in defn.ips if addr in ip.network), addr.max_prefixlen)
            out.append(
                NetworkDHCPLease(
                    iface=defn.bridge or "",
                    expiry_time=int(lease["expiry"]),
                    type=IPAddrType.IPV6 if addr.version == 6 else IPAddrType.IPV4,
                    mac=lease.get("mac") or "",
                    iaid=lease.get("iaid"),
                    ip_addr=str(addr),
                    prefix=prefix,
                    hostname=lease.get("hostname"),
                    client_id=lease.get("client_id"),
                )
            )
        return sorted(out, key=lambda x: (x.type, ipaddress.ip_address(x.ip_addr)))

    # -- the node's life ---------------------------------------------------------------------------

    def _save_state(self, state: NetworkState) -> None:
        # In this thread: a small write to the page cache (no fsync, see NetworkState.save)
        # costs less than the hop to a worker thread.
        path = self.paths.state(state.name)
        try:
            state.save(path)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"record the state of network '{state.name}' in", path
            ) from None

    async def load(self, core: NetworkDriverCore, nursery: trio.Nursery) -> None:
        """Read the definitions, re-attach or clean up what runs, start autostart networks."""
        self.core = core
        self._nursery = nursery
        await trio.to_thread.run_sync(self.paths.create)
        for path in sorted(self.paths.config_dir.glob("*.xml")):
            try:
                defn = parse_network_xml(fsutil.read_nofollow(path))
                if defn.name != path.stem:
                    raise XMLError(f"its name '{defn.name}' differs from its file name")
                obj = NetworkObj(defn)
                obj.autostart = self.paths.autostart(defn.name).exists()
                core.add(obj)
            except (AsvirtError, OSError, ValueError) as err:
                log.error("ignoring network config", path=str(path), error=str(err))
        for path in sorted(self.paths.run_dir.glob("*.state")):
            await self._recover(core, path)
        for obj in list(core):
            if obj.autostart and not obj.active:
                try:
                    await core.network_create(obj.uuid)
                except AsvirtError as err:
                    log.error("cannot autostart network", network=obj.name, error=str(err))

    async def _recover(self, core: NetworkDriverCore, path: Path) -> None:
        try:
            state = NetworkState.load(path)
            live = parse_network_xml(state.live_xml)
            if live.uuid != state.uuid or live.name != state.name:
                raise ValueError("its live XML is another network's")
        except (AsvirtError, OSError, ValueError) as err:
            aside = path.with_name(path.name + ".corrupt")
            log.error(
                "unreadable network state file; kept aside",
                path=str(path),
                kept_as=str(aside),
                error=str(err),
            )
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            return
        obj = core.find(state.uuid)
        if state.phase != RUNNING:
            # A start or a stop was under way when its supervisor died: take it down.
            log.warning(
                "finishing an interrupted network start or stop",
                network=state.name,
                phase=state.phase,
            )
            try:
                await self._take_down(state, None)
            except AsvirtError as err:
                log.error("cannot clean up network", network=state.name, error=str(err))
            if state.phase == STOPPING and obj is not None:
                core.publish(obj, NetworkLifecycleEvent.STOPPED)
            return
        if obj is None:
            obj = NetworkObj(None, live)
            try:
                core.add(obj)
            except AsvirtError as err:
                log.error("cannot re-attach network", network=state.name, error=str(err))
                await self._take_down(state, None)
                return
        runtime = NetworkRuntime(state, live)
        obj.live_def = live
        obj.runtime = runtime
        try:
            await self._reattach(runtime)
        except AsvirtError as err:
            log.error(
                "network is gone or broken; taking it down", network=state.name, error=str(err)
            )
            with contextlib.suppress(AsvirtError):
                await self._take_down(state, runtime)
            core.stopped(obj)
            return
        self._watch(obj, runtime)
        log.info("re-attached to running network", network=state.name)

    async def _reattach(self, runtime: NetworkRuntime) -> None:
        state, defn = runtime.state, runtime.defn
        if state.bridge is not None:
            try:
                ours = await trio.to_thread.run_sync(bridge.owned_by, state.bridge, state.owner)
            except Exception as err:  # netlink's refusal: reported, not raised through open
                raise bridge.host_error(err, f"look up bridge '{state.bridge}'") from None
            if not ours:
                raise OperationFailedError(f"its bridge '{state.bridge}' is gone")
        if state.nft_table is not None and not await firewall.table_exists(
            state.uuid, binary=self.config.nft
        ):
            log.warning(
                "firewall rules of network were gone; installing them again", network=state.name
            )
            await firewall.nft(firewall.ruleset(defn), binary=self.config.nft)
        if defn.needs_dnsmasq:
            pidfd = None
            if state.dnsmasq_pid is not None:
                pidfd = dnsmasq.find(
                    state.dnsmasq_pid, state.dnsmasq_start_time, self.paths.dnsmasq_conf(state.name)
                )
            if pidfd is None:
                # Its supervisor may have died between starting a dnsmasq (after the last
                # one died) and recording it: that one is ours, and holds the bridge's ports.
                found = dnsmasq.adopt(
                    self.paths.pid(state.name), self.paths.dnsmasq_conf(state.name)
                )
                if found is not None:
                    proc, pidfd = found
                    log.warning(
                        "adopting the dnsmasq of network its supervisor had not recorded",
                        network=state.name,
                        pid=proc.pid,
                    )
                    state.dnsmasq_pid, state.dnsmasq_start_time = proc.pid, proc.start_time
                    self._save_state(state)
            if pidfd is None:
                log.warning(
                    "dnsmasq of network died while unsupervised; starting it again",
                    network=state.name,
                )
                await self._start_dnsmasq(runtime)
            else:
                runtime.pidfd = pidfd

    async def shutdown(self, core: NetworkDriverCore) -> None:
        """The node closes: stop watching; networks keep running for the next process."""
        for obj in core:
            runtime = obj.runtime
            if isinstance(runtime, NetworkRuntime):
                if runtime.watcher is not None:
                    runtime.watcher.cancel()
                    await runtime.watcher_done.wait()
                if runtime.pidfd is not None:
                    os.close(runtime.pidfd)
                    runtime.pidfd = None


async def plug_interfaces(
    defn: DomainDef, networks: NetworkDriverCore | None
) -> dict[str, list[int]]:
    """Taps for the ``network``, ``bridge`` and ``ethernet`` interfaces of a domain about to
    start.

    Each tap is created (named as ``<target dev>`` says, else ``vnetN``), given the guest's
    MAC with a first byte of 0xfe and its ``<mtu>`` (else its network's ``<mtu>``, else the
    bridge's), plugged into the network's (or the host's) bridge and brought up; its name,
    and the bridge, are recorded in ``defn`` (the live definition). As in libvirt, a
    network's MTU goes no further than the tap (and dnsmasq's DHCP offers): the interface's
    ``<mtu>``, hence a virtio NIC's ``host_mtu``, stays what the domain says, so the device
    a guest sees, and what a saved guest is restored with, never change with the network.
    An ``ethernet`` interface's tap is on no bridge; with ``<target managed='no'>`` it is
    one that exists, only opened (as libvirt: its owner configures it).
    Returns alias -> descriptors: one per queue of ``<driver queues=N>`` (a multiqueue tap
    or macvtap, opened N times), else one. On failure, every tap made is closed (and so
    gone) and every macvtap made removed before the error propagates.
    """
    plans: list[tuple[Interface, str | None, int | None]] = []
    for nic in defn.interfaces:
        if nic.type == "network":
            if networks is None:
                raise OperationUnsupportedError("this node has no network driver")
            assert nic.source_network is not None
            br, live = networks.active_bridge(nic.source_network)
            plans.append((nic, br, nic.mtu or live.mtu))
        elif nic.type == "bridge":
            assert nic.source_bridge is not None
            plans.append((nic, nic.source_bridge, nic.mtu))
        elif nic.type in ("ethernet", "direct"):
            plans.append((nic, None, nic.mtu))
    if not plans:
        return {}
    return await trio.to_thread.run_sync(_make_taps, plans)


def unplug_interfaces(defn: DomainDef) -> None:
    """Remove what QEMU's descriptors do not take with them when it exits: the macvtaps of
    ``direct`` interfaces (named in the live definition). Blocking (netlink)."""
    for nic in defn.interfaces:
        if nic.type == "direct" and nic.target_dev is not None:
            _remove_macvtap(nic.target_dev)


def _remove_macvtap(name: str) -> None:
    """Remove the macvtap ``name`` in a cleanup: a failure is logged, not raised (it would
    hide the error being cleaned up after, and is no error of the caller's)."""
    try:
        bridge.delete_macvtap(name)
    except Exception as err:
        log.warning("cannot remove macvtap", macvtap=name, error=str(err))


def _make_macvtap(nic: Interface) -> list[int]:
    """The descriptors (one per queue) of a new macvtap for a ``direct`` interface (its name
    in ``nic``)."""
    assert nic.source_dev is not None
    try:
        name, index = bridge.create_macvtap(
            nic.target_dev,
            nic.source_dev,
            mode=nic.direct_mode or "vepa",
            mac=nic.mac or "52:54:00:00:00:00",
        )
    except Exception as err:  # asvirt's words for a missing or taken name, or netlink's
        doing = f"make a macvtap on '{nic.source_dev}' for interface {nic.mac}"
        raise bridge.host_error(err, doing) from None
    nic.target_dev = name
    try:
        return tap.open_macvtap(index, nic.queues or 1)
    except OSError as err:
        _remove_macvtap(name)
        raise SystemCallError.from_oserror(err, "open the macvtap", name) from None


def _make_taps(plans: list[tuple[Interface, str | None, int | None]]) -> dict[str, list[int]]:
    fds: dict[str, list[int]] = {}
    made: list[str] = []  # macvtaps: they outlive their descriptors
    try:
        for nic, br, mtu in plans:
            if nic.type == "direct":
                fds[nic.alias or ""] = _make_macvtap(nic)
                made.append(nic.target_dev or "")
                continue
            if br is not None and not bridge.is_bridge(br):
                raise OperationInvalidError(
                    f"cannot plug interface {nic.mac} into '{br}': no such bridge on the host"
                )
            existing = nic.type == "ethernet" and nic.target_managed is False
            if existing and not bridge.link_exists(nic.target_dev or ""):
                raise OperationInvalidError(
                    f"interface {nic.mac} uses the existing tap '{nic.target_dev}' "
                    "(managed='no'), and the host has no such device"
                )
            try:
                queue_fds, name = tap.open_tap(
                    nic.target_dev or tap.DEFAULT_TEMPLATE,
                    nic.queues or 1,
                    nic.backend_tap or tap.TUN_DEVICE,
                )
            except OSError as err:
                raise SystemCallError.from_oserror(
                    err, "create a tap for interface", nic.mac
                ) from None
            fds[nic.alias or name] = queue_fds
            nic.target_dev = name
            if existing:
                continue  # its owner's to configure
            try:
                bridge.plug(name, br, mac=tap.tap_mac(nic.mac or "52:54:00:00:00:00"), mtu=mtu)
            except Exception as err:
                where = f"into '{br}'" if br is not None else "up"
                raise bridge.host_error(err, f"plug tap '{name}' {where}") from None
            if nic.type == "network":
                nic.source_bridge = br
            if nic.coalesce_rx_frames is not None:
                try:
                    tap.set_rx_coalesce_frames(name, nic.coalesce_rx_frames)
                except OSError as err:
                    raise SystemCallError.from_oserror(
                        err, "set the receive coalescing of tap", name
                    ) from None
    except BaseException:
        for queue_fds in fds.values():
            for fd in queue_fds:
                os.close(fd)
        for name in made:
            _remove_macvtap(name)
        raise
    return fds


def host_network_driver(
    root: Path, config: NetworkConfig, bus: EventBus, tops: tuple[tuple[str, Path], ...] = ()
) -> tuple[NetworkDriverCore, HostNetworkBackend]:
    """A node's network driver and its host backend (``backend.load`` at node open)."""
    backend = HostNetworkBackend(root, config, tops)
    return NetworkDriverCore(bus, backend), backend


__all__ = [
    "HostNetworkBackend",
    "NetworkPaths",
    "NetworkState",
    "host_network_driver",
    "plug_interfaces",
    "unplug_interfaces",
]
