"""Domain configuration: libvirt's domain XML, read safely and strictly, and written back.

This is libvirt's generic XML model (its ``src/conf``): it knows no hypervisor, and imports
nothing from :mod:`asvirt.drivers`.

* :mod:`~asvirt.conf.xmlsafe` -- the one place untrusted XML is parsed;
* :mod:`~asvirt.conf.names` and :mod:`~asvirt.conf.units` -- names, UUIDs and sizes;
* :mod:`~asvirt.conf.domain` -- :class:`~asvirt.conf.domain.DomainDef`, its parser and writer;
* :mod:`~asvirt.conf.devices` and :mod:`~asvirt.conf.addresses` -- the device classes;
* :mod:`~asvirt.conf.postparse` -- libvirt's generic post-parse, the defaults and checks
  that hold for every hypervisor (both drivers run it).

The QEMU driver's define-time defaults, implicit devices and address assignment are in
:mod:`asvirt.drivers.qemu.postparse` and :mod:`asvirt.drivers.qemu.pci`; the QEMU command
line is built from their result by :mod:`asvirt.drivers.qemu.command`.
"""
