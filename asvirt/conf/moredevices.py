"""``<crypto>`` and ``<pstore>``: the devices of libvirt's schema that came last to asvirt,
each with its parser and writer (see :mod:`asvirt.conf.devices` for the conventions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import XMLError
from .addresses import PCIAddress, parse_address
from .devices import DeviceBase, _parse_alias, parse_virtio_driver
from .units import parse_kib
from .xmlnode import Node, XElem

CRYPTO_BACKENDS = ("builtin", "lkcf")


@dataclass(slots=True)
class Crypto(DeviceBase):
    """``<crypto model='virtio' type='qemu'>``: a virtio crypto accelerator, backed by QEMU's
    own ciphers (``builtin``) or the host kernel's crypto API (``lkcf``)."""

    model: str = "virtio"
    type: str = "qemu"
    backend: str = "builtin"
    queues: int | None = None
    #: ``<driver>``: virtio switches (``VIRTIO_OPTIONS``).
    virtio: dict[str, str] = field(default_factory=dict)

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("crypto", {"model": self.model, "type": self.type})
        el.add("backend", {"model": self.backend, "queues": self.queues})
        el.add_if("driver", dict(self.virtio))
        self._format_tail(el, live)


def parse_crypto(node: Node) -> Crypto:
    model = node.choice("model", ("virtio",))
    kind = node.choice("type", ("qemu",))
    if model is None or kind is None:
        raise XMLError("<crypto> needs model='virtio' and type='qemu'")
    crypto = Crypto(model=model, type=kind)
    backend = node.child("backend")
    if backend is None:
        raise XMLError("missing <backend> of <crypto>")
    crypto.backend = backend.choice("model", CRYPTO_BACKENDS) or ""
    if not crypto.backend:
        raise XMLError(f"missing attribute 'model' of {backend.where}")
    crypto.queues = backend.integer("queues", minimum=1, maximum=1024)
    backend.finish()
    crypto.virtio = parse_virtio_driver(node)
    _parse_alias(node, crypto)
    crypto.address = parse_address(node, (PCIAddress,))
    node.finish()
    return crypto


@dataclass(slots=True)
class Pstore(DeviceBase):
    """``<pstore backend='acpi-erst'>``: where a guest kernel keeps its crash records (the
    ACPI Error Record Serialization Table), in a host file that survives the guest."""

    backend: str = "acpi-erst"
    path: str | None = None
    size_kib: int = 0

    def format_xml(self, parent: XElem, live: bool) -> None:
        el = parent.add("pstore", {"backend": self.backend})
        if self.path is not None:
            el.add("path", text=self.path)
        el.add("size", {"unit": "KiB"}, text=str(self.size_kib))
        self._format_tail(el, live)


def parse_pstore(node: Node) -> Pstore:
    backend = node.choice("backend", ("acpi-erst",))
    if backend is None:
        raise XMLError("missing attribute 'backend' of <pstore>")
    ps = Pstore(backend=backend)
    ps.path = node.child_text("path")
    if ps.path is not None and not ps.path.startswith("/"):
        raise XMLError(f"pstore path '{ps.path}' must be absolute")
    size = node.child("size")
    if size is None:
        raise XMLError("missing <size> of <pstore>")
    ps.size_kib = parse_kib(size.text(), size.attr("unit"), what="pstore size")
    size.finish()
    if ps.size_kib == 0:
        raise XMLError("a <pstore> needs a size")
    _parse_alias(node, ps)
    ps.address = parse_address(node, (PCIAddress,))
    node.finish()
    return ps


__all__ = ["Crypto", "Pstore", "parse_crypto", "parse_pstore"]
