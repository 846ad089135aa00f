"""QEMU confined to a user of its own: libvirt's DAC security driver (``security_dac.c``).

With ``[qemu] user`` (and/or ``group``) set, and a supervisor running as root:

* Every QEMU is spawned through util-linux's ``setpriv``, which takes on that user and group
  (with the user's supplementary groups, as libvirt does with initgroups: membership of the
  group of ``/dev/kvm`` or of a disk is how an administrator lends such a user a device), sets
  no_new_privs, drops every capability (effective, permitted, inheritable, ambient and the
  bounding set) and then execs QEMU. posix_spawn cannot change users; fork() with a pre-exec
  hook would copy the supervisor and is unsafe with threads. exec keeps the pid, so the pidfd,
  the start time and the command line that identify a QEMU are QEMU's own.
* The files QEMU opens by path are made usable by that user while the domain runs: disk and
  CD-ROM images, kernel and initrd, firmware and UEFI NVRAM (made from its template first),
  files of serial ports, consoles and channels (created if missing, as QEMU would), their log
  files, sockets it connects to, the random-number device: the files the domain's XML names. A
  file that user cannot already use as QEMU needs is given to it (chown) for as long as some
  domain of the node needs it (a disk unplugged, or a CD-ROM's medium taken out, is no longer
  needed); its previous owner and group are written in the status file of every domain that
  holds it *before* the chown, so that whoever stops the last of them — this supervisor, or
  the next one after a crash — gives the file back. Read-only and shared images need no
  special case: a file several domains use is given back when the last of them stops, and one
  the user can already read (an ISO readable by all) is never touched. A file is given back
  only if it still has the owner it was given: one someone changed meanwhile is left as they
  made it.
* What QEMU cannot reach is refused at start with the path it would stumble on: a directory
  on the way that the user cannot enter (asvirt never changes directories' permissions), a
  directory QEMU must create a socket in but cannot write, the emulator binary, ``/dev/kvm``,
  and the backing files of qcow2 images. Those are named inside the image, not by the XML:
  unlike libvirt, asvirt does not give away a file on an image's word (an image a user
  supplied could name ``/etc/shadow``); they must be readable by QEMU's user already.
* The sockets asvirt places for QEMU (a guest agent channel with no path) go to a directory
  outside the embed root (which only the supervisor may enter), owned by QEMU's user:
  :attr:`~.paths.EmbedPaths.qemu_socket_dir`. The monitor socket and the log are passed to
  QEMU as open descriptors and need nothing.

A domain's own static ``<seclabel model='dac'>`` runs its QEMU as the label's ``user:group``
instead, confined the same way (with the node's ``[qemu] user`` set or not). With
``relabel='yes'`` its files are given to that user exactly as above (recorded, given back at
stop, after a crash, after an unplug); with ``relabel='no'`` (libvirt's default for a static
label) nothing is given: what the user cannot use already is refused at start. A file is given
to one user at a time: a domain of another user that needs a file given away is refused (at
start or attach, before anything is changed) while a domain holds it, unless the file serves
it both as it is now and as it will be once given back. Sockets asvirt places for a label's
QEMU go to a directory of that user's beside the node's (:meth:`DacSecurity.socket_dir_for`).
One disk is kept out of it by ``<source><seclabel model='dac' relabel='no'/>``: checked as
a file asvirt may not give away, whoever QEMU runs as.

Access is judged from the mode bits and POSIX ACLs (``system.posix_acl_access``), as the
kernel judges a process with no capabilities. Limitations: files on other machines (NFS with
root squashing) may refuse the chown, which fails the start with the system's reason; the
owners recorded are per embed root, so two roots sharing a file do not know of each other.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import os
import pwd
import shutil
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

from ...conf.domain import DomainDef
from ...config import QemuConfig
from ...errors import (
    ConfigUnsupportedError,
    InvalidArgError,
    NoConnectError,
    OperationInvalidError,
    OperationUnsupportedError,
    SystemCallError,
)
from ...log import get_logger

log = get_logger("asvirt.qemu.security")

#: Access QEMU needs to a path (the bits of a mode's rwx triplet; SEARCH is a file's x).
READ, WRITE, SEARCH = 4, 2, 1


@dataclasses.dataclass(frozen=True)
class QemuIdentity:
    """Who QEMU runs as: ``[qemu] user`` and ``group``, resolved when the root is opened."""

    #: The user as configured (a name or ``+UID``), for messages.
    user: str
    uid: int
    gid: int
    #: Supplementary groups (the user's, from the group database; else just ``gid``).
    groups: tuple[int, ...]
    #: The ``setpriv`` binary that switches to this identity.
    setpriv: str

    @property
    def gids(self) -> frozenset[int]:
        return frozenset((self.gid, *self.groups))

    def __str__(self) -> str:
        return f"user '{self.user}' (uid {self.uid}, gid {self.gid})"

    def command(self, argv: list[str], caps: tuple[str, ...] = ()) -> list[str]:
        """``argv`` run as this identity, with no new privileges and no capabilities but
        ``caps`` (setpriv's names: ``sys_rawio``), which it keeps as ambient ones."""
        keep = "".join(f",+{cap}" for cap in caps)
        return [
            self.setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            f"--groups={','.join(map(str, self.groups))}",
            "--no-new-privs",
            f"--bounding-set=-all{keep}",
            f"--inh-caps=-all{keep}",
            f"--ambient-caps=-all{keep}",
            "--",
            *argv,
        ]


def qemu_caps(defn: DomainDef) -> tuple[str, ...]:
    """The capabilities QEMU keeps when it runs as another user: ``sys_rawio`` for a SCSI
    LUN with ``rawio='yes'`` (as libvirt keeps CAP_SYS_RAWIO for it)."""
    return ("sys_rawio",) if any(disk.rawio for disk in defn.disks) else ()


def resolve_identity(config: QemuConfig) -> QemuIdentity | None:
    """The identity ``[qemu] user``/``group`` name, or None if neither is set.

    Raises NoConnectError for a supervisor that cannot switch users (not root) or has no
    ``setpriv``, and InvalidArgError for a user or group the system does not know.
    """
    if not config.user and not config.group:
        return None
    if os.geteuid() != 0:
        settings = " and ".join(
            f"{key} {value!r}"
            for key, value in (("user", config.user), ("group", config.group))
            if value
        )
        raise NoConnectError(
            f"[qemu] {settings}: only a supervisor running as root can run QEMU as another "
            f"user or group, and this one runs as uid {os.geteuid()}; leave [qemu] user and "
            "group empty to run QEMU as yourself"
        )
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise NoConnectError(
            "[qemu] user/group: running QEMU as another user needs 'setpriv' (util-linux), "
            "which is not installed"
        )
    entry: pwd.struct_passwd | None = None
    if config.user.startswith("+"):
        uid = int(config.user[1:])
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            entry = None  # a bare number is allowed; it then has no groups of its own
    elif config.user:
        try:
            entry = pwd.getpwnam(config.user)
        except KeyError:
            raise InvalidArgError(
                f"[qemu] user {config.user!r}: no such user (write +UID for a user id that "
                "has no name)"
            ) from None
        uid = entry.pw_uid
    else:
        uid = os.geteuid()
    if config.group.startswith("+"):
        gid = int(config.group[1:])
    elif config.group:
        try:
            gid = grp.getgrnam(config.group).gr_gid
        except KeyError:
            raise InvalidArgError(
                f"[qemu] group {config.group!r}: no such group (write +GID for a group id "
                "that has no name)"
            ) from None
    elif entry is not None:
        gid = entry.pw_gid
    elif config.user:
        raise InvalidArgError(
            f"[qemu] user {config.user!r} has no entry in the user database to take its group "
            "from: set [qemu] group as well"
        )
    else:
        gid = os.getegid()
    groups = [gid]
    if entry is not None and config.user:
        groups = os.getgrouplist(entry.pw_name, gid)
    return QemuIdentity(
        user=config.user or f"+{uid}",
        uid=uid,
        gid=gid,
        groups=tuple(sorted(set(groups))),
        setpriv=setpriv,
    )


# -- a domain's own label ---------------------------------------------------------------------


def parse_dac_label(label: str) -> tuple[int, int]:
    """uid and gid of a DAC label, ``user:group`` (names, or ``+UID:+GID``)."""
    user, sep, group = label.partition(":")
    if not sep or not user or not group:
        raise ConfigUnsupportedError(
            f"unsupported configuration: DAC label '{label}' must be user:group"
        )
    try:
        uid = int(user[1:]) if user.startswith("+") else pwd.getpwnam(user).pw_uid
        gid = int(group[1:]) if group.startswith("+") else grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):
        raise ConfigUnsupportedError(
            f"unsupported configuration: DAC label '{label}' names an unknown user or group"
        ) from None
    return uid, gid


def dac_override(d: DomainDef) -> tuple[int, int] | bool | None:
    """What ``<seclabel model='dac'>`` says QEMU runs as: (uid, gid) for a static label,
    False for ``type='none'`` (the supervisor's own identity), None: the node's default."""
    for sl in d.seclabels:
        if sl.model == "dac" and sl.type == "static":
            return parse_dac_label(sl.label or "")
        if sl.model == "dac" and sl.type == "none":
            return False
    return None


def label_identity(d: DomainDef) -> QemuIdentity | None:
    """Who a static ``<seclabel model='dac'>`` runs QEMU as (None: no such label, or the
    supervisor's own identity). Refuses what this supervisor cannot do."""
    over = dac_override(d)
    if not isinstance(over, tuple):
        return None
    uid, gid = over
    label = next(sl for sl in d.seclabels if sl.model == "dac" and sl.type == "static")
    if (uid, gid) == (os.geteuid(), os.getegid()):
        return None
    if os.geteuid() != 0:
        raise OperationUnsupportedError(
            f"<seclabel model='dac'><label>{label.label}</label>: only a supervisor running "
            f"as root can run QEMU as another user, and this one runs as uid {os.geteuid()}"
        )
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise OperationUnsupportedError(
            "<seclabel model='dac'>: running QEMU as another user needs 'setpriv' (util-linux)"
        )
    return QemuIdentity(user=label.label or "", uid=uid, gid=gid, groups=(gid,), setpriv=setpriv)


def relabels(d: DomainDef) -> bool:
    """Whether the files of ``d`` are given to the user its QEMU runs as: always under the
    node's ``[qemu] user``; under a static ``<seclabel model='dac'>`` of its own only with
    ``relabel='yes'`` (libvirt's default for a static label is ``no``: the administrator
    labels the files)."""
    for sl in d.seclabels:
        if sl.model == "dac" and sl.type == "static":
            return bool(sl.relabel)
    return True


# -- what the kernel would allow --------------------------------------------------------------

_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def _acl(path: str) -> list[tuple[int, int, int]] | None:
    """The POSIX access ACL of ``path`` as (tag, perm, id) entries; None if it has none."""
    try:
        raw = os.getxattr(path, _ACL_XATTR)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != _ACL_VERSION:
        return None  # not a format we know: judge by the mode alone
    return [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw), 8)]


def allows(
    st: os.stat_result, acl: list[tuple[int, int, int]] | None, who: QemuIdentity, want: int
) -> bool:
    """Whether a process of ``who`` with no capabilities gets ``want`` on a file with this
    status and access ACL (the kernel's algorithm, acl(5))."""
    mode = st.st_mode
    if st.st_uid == who.uid:
        return (mode >> 6) & want == want
    if acl is None:
        bits = mode >> 3 if st.st_gid in who.gids else mode
        return bits & want == want
    mask = next((perm for tag, perm, _ in acl if tag == _MASK), 7)
    for tag, perm, qualifier in acl:
        if tag == _USER and qualifier == who.uid:
            return perm & mask & want == want
    in_a_group = False
    for tag, perm, qualifier in acl:
        if (tag == _GROUP_OBJ and st.st_gid in who.gids) or (
            tag == _GROUP and qualifier in who.gids
        ):
            in_a_group = True
            if perm & mask & want == want:
                return True
    if in_a_group:
        return False
    return mode & want == want


def permits(path: str, who: QemuIdentity, want: int) -> bool:
    """Whether ``who`` may ``want`` the file at ``path`` (symlinks followed). OSError if it
    does not exist."""
    return allows(os.stat(path), _acl(path), who, want)


def unreachable(path: str, who: QemuIdentity) -> str | None:
    """The first directory on the way to ``path`` that ``who`` may not enter, or None.

    Both the path as written and the one its symlinks lead to are walked: QEMU passes through
    both. A directory that does not exist ends the walk (QEMU will say what is missing).
    """
    for walked in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        for directory in reversed(Path(walked).parents):
            try:
                if not permits(str(directory), who, SEARCH):
                    return str(directory)
            except OSError:
                break  # missing, or not a directory: QEMU will say so
    return None


def describe_file(path: str) -> str:
    """``-rw------- root:root``: what an administrator needs to see to fix access."""
    try:
        st = os.stat(path)
    except OSError:
        return "unreadable"
    return f"{stat.filemode(st.st_mode)} {_name(st.st_uid, True)}:{_name(st.st_gid, False)}"


def _name(ident: int, user: bool) -> str:
    try:
        return pwd.getpwuid(ident).pw_name if user else grp.getgrgid(ident).gr_name
    except KeyError:
        return str(ident)


# -- what a domain makes QEMU open ------------------------------------------------------------


@dataclasses.dataclass
class Need:
    """A path QEMU will open itself, and how."""

    path: str
    #: What it is, for messages ("disk 'vda'").
    what: str
    #: Access QEMU needs: READ, WRITE, SEARCH bits.
    want: int
    #: Whether asvirt may give the file to QEMU's user (never directories, devices shared by
    #: every domain, or the emulator).
    may_chown: bool = True
    #: QEMU would create the file if it is missing: asvirt creates it first, so that it can be
    #: given to QEMU's user (and its directory need not be writable by that user).
    create: bool = False
    #: What to do when access is missing and cannot be given.
    hint: str = ""


def needs(defn: DomainDef, emulator: str) -> list[Need]:
    """Every path the command line of ``defn`` makes QEMU open by name."""
    out = [Need(emulator, "the emulator", SEARCH, may_chown=False)]
    if defn.domain_type == "kvm":
        out.append(
            Need(
                "/dev/kvm",
                "KVM",
                READ | WRITE,
                may_chown=False,
                hint="give that user access to /dev/kvm (usually: group kvm, mode 0660, and "
                "the user in that group), or use <domain type='qemu'> (TCG)",
            )
        )
    for disk in defn.disks:
        if disk.net is not None:
            # A network disk's only host path is a server's unix socket: QEMU connects to
            # it, which needs write access; it is the server's, so it is never given away.
            for host in disk.net.hosts:
                if host.socket is not None:
                    what = f"the {disk.net.protocol} socket of disk '{disk.target}'"
                    hint = "let QEMU's user connect to it (the server's socket mode or group)"
                    out.append(Need(host.socket, what, WRITE, may_chown=False, hint=hint))
            continue
        if disk.source is None or disk.type not in ("file", "block"):
            continue
        what = f"{'CD-ROM' if disk.device == 'cdrom' else 'disk'} '{disk.target}'"
        readonly = disk.readonly or disk.device == "cdrom"
        want = READ if readonly else READ | WRITE
        if disk.norelabel:
            # <source><seclabel model='dac' relabel='no'/>: its owner keeps it, whoever
            # QEMU runs as (libvirt's DAC driver skips such a disk).
            hint = (
                "its <seclabel model='dac' relabel='no'> keeps asvirt from giving it away: "
                "let that user use it (chown, a group, an ACL)"
            )
            out.append(Need(disk.source, what, want, may_chown=False, hint=hint))
        else:
            out.append(Need(disk.source, what, want))
        if disk.type == "file" and disk.format == "qcow2":
            for backing in qcow2_backing_chain(disk.source):
                # Named inside the image, which whoever supplied the image chose: root must
                # not hand a file to QEMU's user on its say-so (it could name /etc/shadow).
                out.append(
                    Need(
                        backing,
                        f"a backing file of {what}",
                        READ,
                        may_chown=False,
                        hint="backing files are named inside images, so asvirt does not give "
                        "them away; let that user read it (a group, chmod o+r, or an ACL)",
                    )
                )
    if defn.os.kernel is not None:
        out.append(Need(defn.os.kernel, "the kernel", READ))
    if defn.os.initrd is not None:
        out.append(Need(defn.os.initrd, "the initrd", READ))
    loader, nvram = defn.os.loader, defn.os.nvram
    if loader is not None and loader.path is not None:
        # A pflash opened writable unless readonly='yes'; the shared firmware of
        # /usr/share, readable by all, is never touched.
        writable = loader.type == "pflash" and not loader.readonly
        out.append(Need(loader.path, "the firmware", READ | WRITE if writable else READ))
        if loader.type == "pflash" and nvram is not None and nvram.path is not None:
            out.append(Need(nvram.path, "the UEFI NVRAM", READ | WRITE))
    chardevs = [(c, f"{c.kind} '{c.alias or c.target_port}'") for c in defn.chardevs()]
    # A USB redirection's chardev opens its files and sockets as any other.
    chardevs += [(rd.source, f"redirdev '{rd.alias}'") for rd in defn.redirdevs if rd.source]
    for chr_, what in chardevs:
        if chr_.type == "file" and chr_.source_path:
            out.append(Need(chr_.source_path, f"the file of {what}", WRITE, create=True))
        elif chr_.type == "unix" and chr_.source_path:
            if chr_.source_mode == "bind":
                out.append(_socket_directory(chr_.source_path, f"the socket of {what}"))
            else:
                # A listener's socket QEMU connects to: libvirt's DAC driver gives it to
                # QEMU's user too (virSecurityDACSetChardevLabelHelper labels connect-mode
                # sockets, and restores them at stop), the only way a QEMU of another user
                # may connect to one it cannot write. (A network disk's socket, above, is
                # never given away: libvirt labels no network source either.)
                out.append(Need(chr_.source_path, f"the socket of {what}", WRITE))
        elif chr_.type == "dev" and chr_.source_path:
            out.append(Need(chr_.source_path, f"the host device of {what}", READ | WRITE))
        elif chr_.type == "pipe" and chr_.source_path:
            # QEMU opens PATH.in and PATH.out, or PATH itself when those are not there.
            pair = [f"{chr_.source_path}.in", f"{chr_.source_path}.out"]
            for path in pair if all(os.path.exists(p) for p in pair) else [chr_.source_path]:
                out.append(Need(path, f"the pipe of {what}", READ | WRITE))
        if chr_.log_file:
            out.append(Need(chr_.log_file, f"the log file of {what}", WRITE, create=True))
    for gfx in defn.graphics:
        for listen in gfx.listens:
            if listen.type == "socket" and listen.socket:
                out.append(_socket_directory(listen.socket, f"the {gfx.type} socket"))
    for inp in defn.inputs:
        if inp.evdev:
            out.append(Need(inp.evdev, f"the host input device of {inp.alias}", READ | WRITE))
    for rng in defn.rngs:
        if rng.backend == "random" and rng.backend_path:
            out.append(Need(rng.backend_path, f"the random number source of {rng.alias}", READ))
    # Files behind memory devices and the pstore: QEMU creates them (an empty one it sizes).
    files = [(m.path, f"memory device {m.alias}") for m in defn.memory_devices if m.path]
    if defn.pstore is not None and defn.pstore.path:
        files.append((defn.pstore.path, "the pstore"))
    for path, what in files:
        out.append(Need(path, f"the file of {what}", READ | WRITE, create=True))
    for nic in defn.interfaces:
        if nic.type == "vhostuser" and nic.vhost_path:
            what = f"the vhost-user socket of {nic.alias}"
            if nic.vhost_mode == "server":
                out.append(_socket_directory(nic.vhost_path, what))
            else:
                out.append(Need(nic.vhost_path, what, WRITE))
    return out


def _socket_directory(socket_path: str, what: str) -> Need:
    # QEMU replaces (unlinks) and binds the socket: it needs to write the directory.
    return Need(
        os.path.dirname(os.path.abspath(socket_path)),
        f"the directory of {what}",
        WRITE | SEARCH,
        may_chown=False,
        hint="choose a directory that user may write, or leave the path out to have asvirt "
        "place the socket",
    )


_QCOW2_MAGIC = b"QFI\xfb"


def qcow2_backing_chain(image: str, *, limit: int = 64) -> Iterator[str]:
    """The backing files a qcow2 ``image`` names, down its chain (QEMU opens them itself).

    Only qcow2 headers are read (each backing file is followed while it is a qcow2 image too);
    a backing file named by a protocol or JSON is not a local path and is skipped. Unreadable
    files end the chain: QEMU will report them.
    """
    current = image
    for _ in range(limit):
        try:
            with open(current, "rb") as f:
                header = f.read(20)
                if len(header) < 20 or header[:4] != _QCOW2_MAGIC:
                    return
                offset, size = struct.unpack(">QI", header[8:20])
                if not offset or not size or size > 4096:
                    return
                f.seek(offset)
                name = os.fsdecode(f.read(size))
        except OSError:
            return
        if name.startswith("json:") or "://" in name:
            return
        current = os.path.join(os.path.dirname(current), name)
        yield current


# -- files held for QEMU ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Held:
    #: (uid, gid) the file had before it was given to QEMU's user.
    before: tuple[int, int]
    #: (uid, gid) it was given.
    given: tuple[int, int]
    #: UUIDs of the domains that need it.
    holders: set[str]
    #: The chown has been made (or may have been: a record read after a crash).
    applied: bool


class DacSecurity:
    """A node's confinement of its QEMUs: who they run as, and the files given to that user.

    One per node (the domains of a root share files: each file's original owner is known
    once, and given back when the last domain that needs it stops). A domain's QEMU runs as
    the node's ``[qemu] user``, or as the user of its own static ``<seclabel model='dac'>``
    (:meth:`identity_of`); its files are given to whichever of them it runs as (under its
    own label only with ``relabel='yes'``: :func:`relabels`), each file to one owner at a
    time. What it holds lives in the domains' status files (:meth:`held_by`), and is
    rebuilt from them at open (:meth:`adopt`), so giving files back survives the
    supervisor's death.
    """

    def __init__(self, identity: QemuIdentity | None, socket_dir: Path) -> None:
        self.identity = identity
        #: Where sockets asvirt places for a QEMU of the node's identity go (see the
        #: module's docstring); one of a domain's own label: :meth:`socket_dir_for`.
        self.socket_dir = socket_dir
        self._held: dict[str, _Held] = {}
        #: Names of the domains that hold files, for messages.
        self._names: dict[str, str] = {}

    # -- a domain starts ---------------------------------------------------------------------

    def identity_of(self, defn: DomainDef) -> QemuIdentity | None:
        """Who QEMU of ``defn`` runs as: the user of its static ``<seclabel model='dac'>``,
        else the node's ``[qemu] user``; None: the supervisor itself (no label or
        ``type='none'`` on a node without one, or a label naming the supervisor)."""
        if dac_override(defn) is None:
            return self.identity
        return label_identity(defn)

    def socket_dir_for(self, who: QemuIdentity) -> Path:
        """Where asvirt places the sockets of a QEMU running as ``who``: a directory of that
        user's (:func:`ensure_socket_dir`), the node's own for ``[qemu] user``, one beside it
        for a domain's own label."""
        if self.identity is not None and (who.uid, who.gid) == (
            self.identity.uid,
            self.identity.gid,
        ):
            return self.socket_dir
        return self.socket_dir.with_name(f"{self.socket_dir.name}-{who.uid}-{who.gid}")

    def command(self, argv: list[str], defn: DomainDef) -> list[str]:
        """The argv that runs QEMU's ``argv`` as QEMU of ``defn`` runs (keeping the
        capabilities it needs: :func:`qemu_caps`)."""
        who = self.identity_of(defn)
        return argv if who is None else who.command(argv, qemu_caps(defn))

    def prepare(self, uuid: str, defn: DomainDef, emulator: str) -> None:
        """Check that QEMU of domain ``uuid`` can reach everything ``defn`` names, create the
        files it would create, and decide which files it must be given (held for ``uuid``,
        not yet changed: record :meth:`held_by` first, then :meth:`apply`).

        Raises SystemCallError naming the path QEMU could not use, OperationInvalidError for
        a file another domain holds for another user; then nothing is held, and no file
        was created or changed.
        """
        who = self.identity_of(defn)
        if who is None:
            return
        wanted = needs(defn, emulator)
        if not relabels(defn):
            # relabel='no': the label's user must have its files already; QEMU creates
            # those it would (as that user, where it may).
            hint = (
                "the domain's <seclabel model='dac' relabel='no'> leaves its files to the "
                "label's user: give it access (chown, a group, an ACL) or use relabel='yes'"
            )
            wanted = [
                dataclasses.replace(n, may_chown=False, create=False, hint=n.hint or hint)
                for n in wanted
            ]
        socket_dir = self.socket_dir_for(who)
        if any(n.path == str(socket_dir) for n in wanted):
            self._ensure_socket_dir(socket_dir, who)
        for need in wanted:
            self._check_reachable(need, who)
        # What exists first: a file held for another user refuses the start before
        # anything is created.
        chosen = self._choose(uuid, wanted, who)
        missing = [n for n in wanted if n.create and not os.path.lexists(n.path)]
        for need in missing:
            _create_empty(need.path)
        chosen.update(self._choose(uuid, missing, who))
        self._names[uuid] = defn.name
        for real, held in chosen.items():
            held.holders.add(uuid)
            self._held.setdefault(real, held)

    def _choose(self, uuid: str, wanted: list[Need], who: QemuIdentity) -> dict[str, _Held]:
        """The files of ``wanted`` that QEMU of ``uuid``, running as ``who``, must hold:
        those it may not use as they are, and those other domains hold for the same user
        (given back only when the last of them stops)."""
        mine = (who.uid, who.gid)
        chosen: dict[str, _Held] = {}
        for need in wanted:
            if not need.may_chown:
                continue
            try:
                real = os.path.realpath(need.path)
                st = os.stat(real)
                acl = _acl(real)
                has_access = allows(st, acl, who, need.want)
            except FileNotFoundError:
                continue  # QEMU will say it is missing (or, for a socket, wait for it)
            except OSError as err:
                raise SystemCallError.from_oserror(
                    err, f"check that {who} can use {need.what}", need.path
                ) from None
            held = chosen.get(real) or self._held.get(real)
            if held is None:
                if not has_access:
                    chosen[real] = _Held((st.st_uid, st.st_gid), mine, set(), False)
            elif held.given == mine:
                chosen[real] = held
            elif not (has_access and allows(_owned_by(st, held.before), acl, who, need.want)):
                # Given to another user for another domain: QEMU of this one could use it
                # neither now nor once it is given back.
                others = ", ".join(
                    f"'{self._names.get(h, h)}'" for h in sorted(held.holders - {uuid})
                )
                raise OperationInvalidError(
                    f"cannot give {need.what} '{need.path}' to {who}: it is given to uid "
                    f"{held.given[0]}, gid {held.given[1]} for the running domain {others}, "
                    "and a file can belong to one user at a time; run both domains as the "
                    "same user (the same DAC label), or let both users use the file (a "
                    "group, an ACL) with relabel='no'"
                )
        return chosen

    def _check_reachable(self, need: Need, who: QemuIdentity) -> None:
        blocked = unreachable(need.path, who)
        if blocked is not None:
            raise SystemCallError(
                f"QEMU runs as {who} and could not reach {need.what} '{need.path}': it may not "
                f"enter the directory '{blocked}' ({describe_file(blocked)}). Give that user "
                "search permission on it (chmod o+x, or an ACL), or move the file",
                path=need.path,
                errno=errno.EACCES,
            )
        if need.may_chown:
            return
        try:
            ok = permits(need.path, who, need.want)
        except FileNotFoundError:
            return  # QEMU will say so
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"check that {who} can use {need.what}", need.path
            ) from None
        if not ok:
            run = "enter" if os.path.isdir(need.path) else "run"
            how = "/".join(
                word
                for bit, word in ((READ, "read"), (WRITE, "write"), (SEARCH, run))
                if need.want & bit
            )
            hint = f": {need.hint}" if need.hint else ""
            raise SystemCallError(
                f"QEMU runs as {who} and may not {how} {need.what} '{need.path}' "
                f"({describe_file(need.path)}){hint}",
                path=need.path,
                errno=errno.EACCES,
            )

    def _ensure_socket_dir(self, path: Path, who: QemuIdentity) -> None:
        try:
            ensure_socket_dir(path, who)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, f"prepare the socket directory of {who}", path
            ) from None

    def apply(self, uuid: str) -> None:
        """Give QEMU's user the files held for ``uuid`` that it does not have yet.

        Raises SystemCallError if a file cannot be given (the caller then releases ``uuid``).
        """
        for real, held in self._held.items():
            if uuid in held.holders and not held.applied:
                try:
                    os.chown(real, *held.given, follow_symlinks=False)
                except OSError as err:
                    raise SystemCallError.from_oserror(
                        err,
                        f"change the owner (to QEMU's uid {held.given[0]}, gid {held.given[1]}) of",
                        real,
                    ) from None
                held.applied = True
                log.info("gave a file to QEMU's user", path=real, uid=held.given[0])

    # -- what survives the supervisor ---------------------------------------------------------

    def held_by(self, uuid: str) -> dict[str, list[int]]:
        """For the status file of ``uuid``: each file held for it, with its owner and group
        before and the ones it was given: ``{path: [uid, gid, given_uid, given_gid]}``."""
        return {
            real: [*held.before, *held.given]
            for real, held in self._held.items()
            if uuid in held.holders
        }

    def adopt(self, uuid: str, held: dict[str, list[int]], name: str | None = None) -> None:
        """Take over what a status file says ``uuid`` (domain ``name``) holds (a previous
        supervisor's work), whoever it was given to.

        Call it for every status file before any domain is re-attached or given up: a file is
        given back only when no domain holds it any more.
        """
        if name is not None:
            self._names[uuid] = name
        for real, (uid, gid, given_uid, given_gid) in held.items():
            entry = self._held.setdefault(
                real, _Held((uid, gid), (given_uid, given_gid), set(), True)
            )
            entry.holders.add(uuid)

    # -- a device leaves ---------------------------------------------------------------------

    def retain(self, uuid: str, defn: DomainDef) -> bool:
        """Domain ``uuid`` now needs only the files ``defn`` (its live definition, after a
        device left it or failed to go in) names: give back those it held for anything else
        and no other domain holds, as :meth:`release` does when it stops. True if it held
        something it no longer does (its status record must be written again).

        Never raises: what cannot be given back is logged.
        """
        wanted: set[str] = set()
        for need in needs(defn, ""):
            if need.may_chown:
                try:
                    wanted.add(os.path.realpath(need.path))
                except OSError:
                    continue
        gone = [r for r, held in self._held.items() if uuid in held.holders and r not in wanted]
        for real in gone:
            self._drop(uuid, real)
        return bool(gone)

    def _drop(self, uuid: str, real: str) -> None:
        """``uuid`` no longer holds ``real``: give it back if no other domain does."""
        held = self._held[real]
        held.holders.discard(uuid)
        if held.holders:
            return
        del self._held[real]
        if held.applied:
            _give_back(real, held)

    # -- a domain stops --------------------------------------------------------------------------

    def release(self, uuid: str) -> None:
        """Domain ``uuid`` no longer needs its files: give back those no other domain holds.

        Never raises (it runs while a domain's end is concluded): what cannot be given back
        is logged.
        """
        for real in [r for r, held in self._held.items() if uuid in held.holders]:
            self._drop(uuid, real)
        self._names.pop(uuid, None)

    # -- the node closes -------------------------------------------------------------------------

    def remove_socket_dirs(self) -> None:
        """Remove the socket directories of QEMU's users (the node's, and those of domains'
        own labels) that nothing is left in. Never raises."""
        for path in (self.socket_dir, *self.socket_dir.parent.glob(f"{self.socket_dir.name}-*")):
            remove_socket_dir(path)


def _give_back(real: str, held: _Held) -> None:
    try:
        st = os.lstat(real)
        if (st.st_uid, st.st_gid) != held.given:
            log.warning(
                "not giving a file back: its owner changed while QEMU used it",
                path=real,
                owner=f"{st.st_uid}:{st.st_gid}",
                given=f"{held.given[0]}:{held.given[1]}",
            )
            return
        os.chown(real, *held.before, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as err:
        log.error("cannot give a file back to its owner", path=real, error=str(err))
        return
    log.info("gave a file back to its owner", path=real, uid=held.before[0])


def _owned_by(st: os.stat_result, owner: tuple[int, int]) -> os.stat_result:
    """``st`` as it would be with ``owner`` (uid, gid): what :func:`allows` judges."""
    fields = list(st[:10])
    fields[4], fields[5] = owner
    return os.stat_result(fields)


def _create_empty(path: str) -> None:
    """Create the file QEMU would create (a serial port's output), refusing a planted symlink."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:
        return  # created meanwhile: QEMU opens whatever is there, as it would have
    except OSError as err:
        raise SystemCallError.from_oserror(err, "create", path) from None
    os.close(fd)


def ensure_socket_dir(path: Path, who: QemuIdentity) -> None:
    """Make ``path`` a directory of ``who`` in a directory only root may write (``0755``).

    Raises OSError for a parent that is not root's own, or is writable by others: someone
    else could then replace the directory QEMU's sockets are in.
    """
    parent = path.parent
    try:
        os.mkdir(parent, 0o755)
    except FileExistsError:
        pass
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (or a symlink to one)", str(parent))
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(errno.EPERM, "not root's own, or writable by others", str(parent))
    if stat.S_IMODE(st.st_mode) != 0o755:
        os.chmod(parent, 0o755)  # our directory: others must be able to pass through it
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (or a symlink to one)", str(path))
    if (st.st_uid, st.st_gid) != (who.uid, who.gid):
        # Only root writes the parent: whatever is here, asvirt made.
        os.chown(path, who.uid, who.gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def remove_socket_dir(path: Path) -> None:
    """Remove the socket directory if nothing is left in it (no QEMU runs any more)."""
    try:
        os.rmdir(path)
    except OSError:
        pass  # sockets of QEMUs still running, or never made


__all__ = [
    "DacSecurity",
    "QemuIdentity",
    "allows",
    "dac_override",
    "label_identity",
    "needs",
    "parse_dac_label",
    "qcow2_backing_chain",
    "qemu_caps",
    "relabels",
    "resolve_identity",
    "unreachable",
]
