"""Domain configuration: libvirt's domain XML, read safely and strictly, and written back.

* :mod:`~asvirt.conf.xmlsafe` -- the one place untrusted XML is parsed;
* :mod:`~asvirt.conf.names` and :mod:`~asvirt.conf.units` -- names and sizes;
* :mod:`~asvirt.conf.domain` -- :class:`~asvirt.conf.domain.DomainDef`, its parser and writer;
* :mod:`~asvirt.conf.devices` and :mod:`~asvirt.conf.addresses` -- the device classes;
* :mod:`~asvirt.conf.prepare` and :mod:`~asvirt.conf.pci` -- libvirt's define-time defaults,
  implicit devices and address assignment.

The QEMU command line is built from a prepared definition by
:mod:`asvirt.drivers.qemu.command`.
"""
