"""The QEMU hypervisor driver family (``qemu:///embed?root=DIR``)."""

from .. import registry
from .driver import open_qemu

registry.register("qemu", open_qemu, examples=("qemu:///embed?root=DIR",))
