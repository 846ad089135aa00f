"""libvirt's secret usage types (``virSecretUsageType``): what a secret is for.

Apart from :mod:`.secret` (which parses secret XML with lxml) so that the driver API's
records, which a one-shot command-line client imports, can name it cheaply.
"""

from __future__ import annotations

import enum


class SecretUsageType(enum.IntEnum):
    """libvirt's ``virSecretUsageType``: what a secret is for (its ``<usage type=...>``)."""

    NONE = 0
    VOLUME = 1
    CEPH = 2
    ISCSI = 3
    TLS = 4
    VTPM = 5

    @property
    def label(self) -> str:
        """The XML's (and virsh's) name: ``"ceph"``."""
        return self.name.lower()


__all__ = ["SecretUsageType"]
