"""Where guest RAM comes from (``<memoryBacking>``): QEMU's memory backend objects, and the
directories they need on the host.

As libvirt's QEMU driver has it:

* ``<source type='memfd'>``: ``memory-backend-memfd``; ``type='file'``: a
  ``memory-backend-file`` whose file is ``DIR/NAME/ALIAS``, ``DIR`` being ``[qemu]
  memory_backing_dir`` (qemu.conf's ``memory_backing_dir``; default ``ROOT/lib/qemu/ram``).
  ``DIR/NAME`` is made when the domain starts and removed, with the files QEMU left in it,
  when it stops.
* ``<hugepages>`` with ``<source type='memfd'>``: a hugetlb ``memory-backend-memfd`` of the
  page size (no mount needed); else:
* ``<hugepages>``: a ``memory-backend-file`` on a hugetlbfs mount of the page size, in a
  directory ``MOUNT/asvirt/UUID`` made at start (QEMU creates its file there and unlinks it
  at once, so the pages go back to the host when QEMU exits) and removed at stop. A
  ``<page nodeset=...>`` chooses the size of the guest NUMA nodes it names; a node no
  ``<page>`` names gets huge pages only from a ``<page>`` without nodeset.
* ``<allocation mode='immediate' threads=N>``: ``prealloc`` (always, with huge pages), with
  ``prealloc-threads``; ``<discard/>`` (or a cell's ``discard=``): ``discard-data`` of a
  file backend; ``<access mode=...>`` (or a cell's ``memAccess=``): ``share``.

A start is refused, before QEMU exists, when the host has no hugetlbfs mount of a size the
domain needs, or not enough free pages of it (libvirt's words where it has them).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import fsutil
from ...conf.domain import DomainDef
from ...errors import ConfigUnsupportedError, OperationFailedError
from .tuning import default_hugepage_kib, hugetlbfs_mount

#: Where a hugepage domain's directory goes below the hugetlbfs mount.
HUGEPAGE_SUBDIR = "asvirt"


def memory_backend(d: DomainDef) -> str | None:
    """The QOM type of the object backing guest RAM, or None for QEMU's default."""
    mb = d.memory_backing
    if mb is None or (
        mb.source is None
        and mb.access is None
        and mb.allocation is None
        and mb.allocation_threads is None
        and not mb.hugepages
    ):
        return None
    if mb.source == "memfd":
        return "memory-backend-memfd"
    if mb.hugepages or mb.source == "file":
        return "memory-backend-file"
    return "memory-backend-ram"


def shared_memory(d: DomainDef) -> bool:
    """Whether guest RAM may be mapped by another process (vhost-user and virtiofsd need
    that): ``<access mode='shared'/>``, or every NUMA cell's ``memAccess='shared'`` (as
    libvirt accepts either)."""
    mb = d.memory_backing
    default = mb.access if mb is not None else None
    cells = d.cpu.numa if d.cpu is not None else []
    if cells:
        return all((cell.mem_access or default) == "shared" for cell in cells)
    return default == "shared"


def require_shared_memory(d: DomainDef, where: str, what: str) -> None:
    """Refuse ``d`` unless its RAM is shared, as libvirt refuses vhost-user devices ("'X'
    requires shared memory"): ``what`` is the device's backend, ``where`` the device."""
    if not shared_memory(d):
        raise ConfigUnsupportedError(
            f"unsupported configuration: {where}: '{what}' requires shared memory "
            "(<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>, "
            "or memAccess='shared' on every NUMA cell), for the backend maps guest RAM"
        )


def hugepage_dir(mount: str, uuid: str) -> str:
    """The directory of a domain's huge page files on the hugetlbfs ``mount``."""
    return f"{mount}/{HUGEPAGE_SUBDIR}/{uuid}"


def _page_mount(page_kib: int) -> str:
    """The hugetlbfs mount of ``page_kib`` pages (0: the default size); for a command line
    built where there is none (domxml-to-native), where hosts usually mount them."""
    mount = hugetlbfs_mount(page_kib or None)
    if mount is not None:
        return mount
    if not page_kib or page_kib == default_hugepage_kib():
        return "/dev/hugepages"
    return f"/dev/hugepages{page_kib // 1024}M" if page_kib < 1 << 20 else "/dev/hugepages1G"


def backend_props(
    d: DomainDef,
    obj_id: str,
    size_kib: int,
    *,
    node: int | None,
    memory_dir: str | None,
    access: str | None = None,
    discard: bool | None = None,
) -> dict[str, Any]:
    """The properties of the memory backend ``obj_id`` of ``size_kib`` for guest NUMA node
    ``node`` (None: the RAM of a domain without NUMA cells), without its host-node policy.

    ``memory_dir`` is the domain's directory for ``<source type='file'>`` RAM
    (:func:`domain_memory_dir`); None names libvirt's default, for a command line only shown.
    """
    mb = d.memory_backing
    page_kib = mb.page_kib_for(node) if mb is not None else None
    props: dict[str, Any] = {"qom-type": "memory-backend-ram", "id": obj_id}
    if page_kib is not None and mb is not None and mb.source == "memfd":
        # A hugetlb memfd: no mount, no directory; the pages come from the size's pool.
        props["qom-type"] = "memory-backend-memfd"
        props["hugetlb"] = True
        props["hugetlbsize"] = (page_kib or default_hugepage_kib()) * 1024
    elif page_kib is not None:
        # (A file source gives way to huge pages, the more specific of the two, as libvirt.)
        props["qom-type"] = "memory-backend-file"
        props["mem-path"] = hugepage_dir(_page_mount(page_kib), d.uuid)
    elif mb is not None and mb.source == "file":
        props["qom-type"] = "memory-backend-file"
        base = memory_dir or f"/var/lib/libvirt/qemu/ram/{d.name}"
        props["mem-path"] = f"{base}/{obj_id}"
    elif mb is not None and mb.source == "memfd":
        props["qom-type"] = "memory-backend-memfd"
    access = access or (mb.access if mb is not None else None)
    if access is not None:
        props["share"] = access == "shared"
    if discard is None and mb is not None:
        discard = mb.discard
    if discard and props["qom-type"] == "memory-backend-file":
        props["discard-data"] = True
    if mb is not None and (mb.allocation == "immediate" or page_kib is not None):
        props["prealloc"] = True  # libvirt preallocates huge pages as well
        if mb.allocation_threads is not None:
            props["prealloc-threads"] = mb.allocation_threads
    props["size"] = size_kib * 1024
    return props


# -- host checks and directories ------------------------------------------------------------


def _ram_pieces(d: DomainDef) -> list[tuple[int | None, int]]:
    """(guest NUMA node, KiB) of each piece of guest RAM that has a backend of its own."""
    cells = d.cpu.numa if d.cpu is not None else []
    pieces: list[tuple[int | None, int]] = (
        [(c.id, c.memory_kib) for c in cells] if cells else [(None, d.initial_memory_kib)]
    )
    pieces += [(m.node, m.size_kib) for m in d.memory_devices if m.model in ("dimm", "virtio-mem")]
    return pieces


def hugepage_needs(d: DomainDef) -> dict[int, int]:
    """KiB of huge pages the domain's RAM needs, by page size (KiB; the default resolved)."""
    mb = d.memory_backing
    needs: dict[int, int] = {}
    if mb is None or not mb.hugepages:
        return needs
    for node, kib in _ram_pieces(d):
        page = mb.page_kib_for(node)
        if page is None:
            continue
        page = page or default_hugepage_kib()
        needs[page] = needs.get(page, 0) + kib
    return needs


def check_hugepages(d: DomainDef) -> dict[int, str]:
    """The hugetlbfs mount of each page size guest RAM needs; refuses a start the host
    could not give them (no such mount, or too few free pages)."""
    mounts: dict[int, str] = {}
    memfd = d.memory_backing is not None and d.memory_backing.source == "memfd"
    for size, kib in sorted(hugepage_needs(d).items()):
        mount = hugetlbfs_mount(size)
        if mount is None and not memfd:  # a hugetlb memfd needs the pages, not a mount
            # libvirt's words for it.
            raise OperationFailedError(
                f"hugetlbfs filesystem is not mounted or disabled by administrator config "
                f"(no hugetlbfs of {size} KiB pages in /proc/mounts)"
            )
        free_file = Path(f"/sys/kernel/mm/hugepages/hugepages-{size}kB/free_hugepages")
        try:
            free = int(free_file.read_text())
        except (OSError, ValueError):
            raise OperationFailedError(f"the host has no {size} KiB huge pages") from None
        needed = -(-kib // size)
        if free < needed:
            raise OperationFailedError(
                f"not enough free huge pages of {size} KiB for domain '{d.name}': it needs "
                f"{needed}, {free} are free (raise /proc/sys/vm/nr_hugepages or "
                f"/sys/kernel/mm/hugepages/hugepages-{size}kB/nr_hugepages)"
            )
        if mount is not None:
            mounts[size] = mount
    return mounts


def backing_dir(configured: str, default: Path) -> Path:
    """``[qemu] memory_backing_dir``, or (empty) the node's own ``default``."""
    return Path(configured) if configured else default


def _file_backed(d: DomainDef) -> bool:
    """Whether some piece of ``<source type='file'>`` RAM is not on huge pages instead."""
    mb = d.memory_backing
    return mb is not None and any(mb.page_kib_for(node) is None for node, _ in _ram_pieces(d))


def domain_memory_dir(memory_backing_dir: Path, d: DomainDef) -> Path:
    """The directory of ``d``'s ``<source type='file'>`` RAM files."""
    return memory_backing_dir / d.name


@dataclass(frozen=True, slots=True)
class MemoryDirs:
    """The directories a domain's RAM needs on the host while it runs."""

    #: ``<source type='file'>``: ``DIR/NAME`` (QEMU's files in it are the domain's).
    files: Path | None
    #: ``<hugepages>``: ``MOUNT/asvirt/UUID`` on each hugetlbfs mount used.
    hugepages: tuple[Path, ...]

    @classmethod
    def of(cls, d: DomainDef, memory_backing_dir: Path) -> MemoryDirs:
        """The directories of ``d`` (the hugetlbfs mounts of its page sizes that exist)."""
        mb = d.memory_backing
        files = None
        if mb is not None and mb.source == "file" and _file_backed(d):
            files = domain_memory_dir(memory_backing_dir, d)
        sizes = hugepage_needs(d) if mb is not None and mb.source != "memfd" else {}
        mounts = {m for size in sizes if (m := hugetlbfs_mount(size)) is not None}
        huge = tuple(Path(hugepage_dir(m, d.uuid)) for m in sorted(mounts))
        return cls(files, huge)

    def __bool__(self) -> bool:
        return self.files is not None or bool(self.hugepages)

    def create(self, owner: tuple[int, int] | None) -> None:
        """Make the directories (0700, given to QEMU's ``owner`` uid/gid when it runs as
        another user). Raises OSError for a symlink or a foreign directory in the way."""
        if self.files is not None:
            fsutil.make_parents(self.files.parent, mode=0o711 if owner else 0o700)
            # QEMU's user passes through it to its own directory; an existing one is the
            # administrator's, left as it is.
            _make_dirs(self.files.parent, None, mode=0o711, narrow=False)
            _make_dirs(self.files, owner)
        for path in self.hugepages:
            _make_dirs(path.parent, None, mode=0o711, narrow=False)
            _make_dirs(path, owner)

    def remove(self) -> None:
        """Remove the directories and what QEMU left in them (it has exited)."""
        if self.files is not None:
            _remove_tree(self.files)
        for path in self.hugepages:
            _remove_tree(path)


def _make_dirs(
    path: Path, owner: tuple[int, int] | None, *, mode: int = 0o700, narrow: bool = True
) -> None:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (or a symlink to one)", str(path))
    if st.st_uid not in (os.geteuid(), owner[0] if owner else os.geteuid()):
        raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by us", str(path))
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        os.chown(path, *owner, follow_symlinks=False)
    if narrow and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def _remove_tree(path: Path) -> None:
    # rmtree neither follows a symlink planted inside nor one at ``path`` (it refuses that).
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
    except FileNotFoundError:
        pass


__all__ = [
    "HUGEPAGE_SUBDIR",
    "MemoryDirs",
    "backend_props",
    "backing_dir",
    "check_hugepages",
    "domain_memory_dir",
    "hugepage_dir",
    "hugepage_needs",
    "memory_backend",
    "require_shared_memory",
    "shared_memory",
]
