"""libvirt's ``virDomainMetadataType``: which of a domain's metadata a call means (a module of
its own: a one-shot client imports it without the XML model)."""

from __future__ import annotations

import enum


class MetadataType(enum.IntEnum):
    """libvirt's ``virDomainMetadataType``."""

    #: ``<description>``.
    DESCRIPTION = 0
    #: ``<title>``.
    TITLE = 1
    #: An element of ``<metadata>``, by its namespace URI.
    ELEMENT = 2


__all__ = ["MetadataType"]
