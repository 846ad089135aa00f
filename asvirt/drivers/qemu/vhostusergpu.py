"""``<video><driver name='vhostuser'/><model type='virtio'/></video>``: a vhost-user-gpu.

The GPU of such a video device runs in a program of its own, as libvirt runs it:

* the program is found through QEMU's vhost-user descriptors (:mod:`.interop`, type
  ``gpu``; Debian's ``qemu-system-gui`` installs ``/usr/lib/qemu/vhost-user-gpu`` and
  ``50-qemu-gpu.json``), the first whose ``--print-capabilities`` offers what the video asks
  (``virgl`` for ``accel3d='yes'``, ``render-node`` for a ``rendernode``); the domain's XML
  has no place for the program's path (libvirt's schema has none);
* it is started before QEMU, on one end of a socketpair (``--fd=N``), QEMU getting the other
  (``-chardev socket,id=chr-vu-ALIAS,fd=M`` and ``vhost-user-vga`` or
  ``vhost-user-gpu-pci`` with ``chardev=``), supervised with the domain's other helpers
  (:mod:`.helpers`);
* ``accel3d='yes'`` adds ``--virgl`` and a DRM render node (``--render-node=``): the one
  ``rendernode`` names, else the host's first ``/dev/dri/renderD*``, and a host without one
  refuses the start. Without 3D, libvirt gives the program the host's render node whenever
  it can take one, and fails where there is none; asvirt gives it one where the host has
  it, and lets a 2D GPU run without (vhost-user-gpu then keeps its buffers in memfds).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import stat
import subprocess

from ...conf.devices import Video
from ...errors import ConfigUnsupportedError, OperationFailedError
from .interop import interop_dirs, vhost_user_binaries

#: Where vhost-user backends are described, in libvirt's order of precedence.
DESCRIPTOR_DIRS = interop_dirs("vhost-user")
#: The host's DRM render nodes.
RENDER_NODES = "/dev/dri/renderD*"
#: How long ``--print-capabilities`` may take.
PROBE_DEADLINE = 10.0
#: The Debian package that ships QEMU's vhost-user-gpu.
PACKAGE = "qemu-system-gui"


@dataclasses.dataclass(frozen=True)
class GpuBackend:
    """A vhost-user-gpu program and the features it says it has."""

    binary: str
    features: frozenset[str]


def chardev_id(alias: str) -> str:
    """QEMU's id of the vhost-user chardev of device ``alias`` (libvirt's name)."""
    return f"chr-vu-{alias}"


def _capabilities(binary: str) -> frozenset[str] | None:
    try:
        out = subprocess.run(
            [binary, "--print-capabilities"],
            capture_output=True,
            timeout=PROBE_DEADLINE,
            check=True,
        ).stdout
        doc = json.loads(out)
        if doc.get("type") != "gpu":
            return None
        return frozenset(str(f) for f in doc.get("features", []))
    except (OSError, subprocess.SubprocessError, ValueError, AttributeError, TypeError):
        return None


def find_gpu_backend(video: Video, dirs: tuple[str, ...] | None = None) -> GpuBackend:
    """The vhost-user-gpu for ``video``, as libvirt chooses it (blocking: run it in a thread).

    Raises :class:`OperationFailedError` (libvirt's code) when no descriptor of type
    ``gpu`` names a program that has what the video asks for (``dirs``: where to look,
    default :data:`DESCRIPTOR_DIRS`)."""
    dirs = dirs or DESCRIPTOR_DIRS
    for binary in vhost_user_binaries("gpu", dirs):
        features = _capabilities(binary)
        if features is None:
            continue
        if video.accel3d and "virgl" not in features:
            continue
        if video.rendernode is not None and "render-node" not in features:
            continue
        return GpuBackend(binary, features)
    wants = " with virgl" if video.accel3d else ""
    raise OperationFailedError(
        f"Unable to find a satisfying vhost-user-gpu{wants}: no descriptor of type 'gpu' "
        f"in {' or '.join(dirs)} names one (Debian's {PACKAGE} installs "
        f"/usr/lib/qemu/vhost-user-gpu; apt install --no-install-recommends {PACKAGE})"
    )


def host_render_node() -> str | None:
    """The host's first DRM render node, or None."""
    for path in sorted(glob.glob(RENDER_NODES)):
        try:
            if stat.S_ISCHR(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


def gpu_argv(backend: GpuBackend, video: Video, where: str) -> list[str]:
    """The program's command line (``{fd}``: its end of the socketpair); fills in
    ``video.rendernode`` (the live definition's) with the node it is given. Raises
    :class:`ConfigUnsupportedError` for a render node the host does not have."""
    if video.rendernode is None and "render-node" in backend.features:
        video.rendernode = host_render_node()
        if video.rendernode is None and video.accel3d:
            raise ConfigUnsupportedError(
                f"unsupported configuration: accel3d='yes' of {where} needs a DRM render node "
                f"for vhost-user-gpu's virgl, and this host has none ({RENDER_NODES})"
            )
    elif video.rendernode is not None and not os.path.exists(video.rendernode):
        raise ConfigUnsupportedError(
            f"unsupported configuration: the render node '{video.rendernode}' of {where} does "
            "not exist"
        )
    argv = [backend.binary, "--fd={fd}"]
    if video.accel3d:
        argv.append("--virgl")
    if video.rendernode is not None:
        argv.append(f"--render-node={video.rendernode}")
    return argv


__all__ = [
    "DESCRIPTOR_DIRS",
    "GpuBackend",
    "chardev_id",
    "find_gpu_backend",
    "gpu_argv",
    "host_render_node",
]
