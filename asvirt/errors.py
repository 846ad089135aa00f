"""The errors asvirt raises.

Every error the library raises on purpose derives from :class:`AsvirtError` and carries a
stable :attr:`~AsvirtError.code`. The codes are libvirt's ``virErrorNumber`` values, so code
ported from libvirt-python (``e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN``) keeps its
meaning: compare ``err.code == asvirt.ErrorCode.NO_DOMAIN``.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """libvirt's ``virErrorNumber`` values for the errors asvirt can raise."""

    INTERNAL_ERROR = 1
    NO_SUPPORT = 3
    NO_CONNECT = 5
    OPERATION_DENIED = 6
    INVALID_ARG = 8
    OPERATION_FAILED = 9
    XML_ERROR = 27
    DOM_EXIST = 28
    SYSTEM_ERROR = 38
    NO_DOMAIN = 42
    NO_NETWORK = 43
    NO_STORAGE_POOL = 49
    NO_STORAGE_VOL = 50
    OPERATION_INVALID = 55
    CONFIG_UNSUPPORTED = 67
    OPERATION_TIMEOUT = 68
    NO_DOMAIN_SNAPSHOT = 72
    DEVICE_MISSING = 99
    ARGUMENT_UNSUPPORTED = 74
    OPERATION_UNSUPPORTED = 84
    AGENT_UNRESPONSIVE = 86
    RESOURCE_BUSY = 87
    STORAGE_VOL_EXIST = 90
    NETWORK_EXIST = 37
    INVALID_SECRET = 65
    NO_SECRET = 66
    NO_HOSTNAME = 108
    NO_DOMAIN_METADATA = 80


class AsvirtError(Exception):
    """Base class of every error asvirt raises on purpose.

    ``str(err)`` is a one-line message meant for people; :attr:`code` is meant for programs.
    """

    code: ErrorCode = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InternalError(AsvirtError):
    """Something went wrong inside asvirt or the hypervisor that the caller could not prevent."""

    code = ErrorCode.INTERNAL_ERROR


class AgentCommandNotFoundError(InternalError):
    """The guest agent does not know the command (qemu-ga's ``CommandNotFound``: an older
    agent, or one built without it). An InternalError, as libvirt reports it."""


class NoConnectError(AsvirtError):
    """The URI names no driver, or the driver could not be opened."""

    code = ErrorCode.NO_CONNECT


class InvalidArgError(AsvirtError):
    """An argument is invalid (a bad name, a bad flag combination, ...)."""

    code = ErrorCode.INVALID_ARG


class XMLError(AsvirtError):
    """The XML is malformed, hostile, or does not describe a valid object."""

    code = ErrorCode.XML_ERROR


class ConfigUnsupportedError(XMLError):
    """The XML is well formed but asks for something asvirt does not support.

    A subclass of :class:`XMLError` so callers that only care "was my XML accepted?" catch both.
    """

    code = ErrorCode.CONFIG_UNSUPPORTED


class NoDomainError(AsvirtError):
    """No domain with that name or UUID exists (or it vanished)."""

    code = ErrorCode.NO_DOMAIN


class DomainExistsError(AsvirtError):
    """A domain with that name or UUID already exists."""

    code = ErrorCode.DOM_EXIST


class OperationInvalidError(AsvirtError):
    """The operation does not apply in the object's current state."""

    code = ErrorCode.OPERATION_INVALID


class OperationDeniedError(AsvirtError):
    """The connection may not do this (a read-only connection asked to change something)."""

    code = ErrorCode.OPERATION_DENIED


class OperationFailedError(AsvirtError):
    """The hypervisor was asked to do something and failed."""

    code = ErrorCode.OPERATION_FAILED


class SystemCallError(AsvirtError):
    """A file or system call failed (a full disk, a missing directory, a refused symlink).

    The message names what asvirt was doing, the path and the system's reason; :attr:`path`
    and :attr:`errno` are there for programs. libvirt's ``VIR_ERR_SYSTEM_ERROR``.
    """

    code = ErrorCode.SYSTEM_ERROR

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno

    @classmethod
    def from_oserror(cls, err: OSError, doing: str, path: object = None) -> SystemCallError:
        """``cannot DOING 'PATH': REASON`` from an OSError (``path`` defaults to its own)."""
        where = path if path is not None else err.filename
        reason = err.strerror or str(err)
        text = (
            f"cannot {doing} '{where}': {reason}"
            if where is not None
            else f"cannot {doing}: {reason}"
        )
        return cls(text, path=None if where is None else str(where), errno=err.errno)


class OperationTimeoutError(AsvirtError):
    """The hypervisor did not answer within the deadline."""

    code = ErrorCode.OPERATION_TIMEOUT


class OperationUnsupportedError(AsvirtError):
    """The driver does not support this operation."""

    code = ErrorCode.OPERATION_UNSUPPORTED


class QMPError(AsvirtError):
    """QEMU answered a QMP command with an error, or the monitor connection failed.

    :attr:`error_class` is QEMU's error class (``"GenericError"``, ``"CommandNotFound"``, ...)
    when QEMU sent one.
    """

    code = ErrorCode.OPERATION_FAILED

    def __init__(self, message: str, *, error_class: str | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class


class ResourceBusyError(AsvirtError):
    """A resource (an embed root, a socket) is already in use by someone else."""

    code = ErrorCode.RESOURCE_BUSY


class NoNetworkError(AsvirtError):
    """No network with that name or UUID exists."""

    code = ErrorCode.NO_NETWORK


class NetworkExistsError(AsvirtError):
    """A network with that name or UUID already exists."""

    code = ErrorCode.NETWORK_EXIST


class NoStoragePoolError(AsvirtError):
    """No storage pool with that name or UUID exists."""

    code = ErrorCode.NO_STORAGE_POOL


class NoStorageVolError(AsvirtError):
    """No storage volume with that name exists in the pool."""

    code = ErrorCode.NO_STORAGE_VOL


class StorageVolExistsError(AsvirtError):
    """A storage volume with that name already exists in the pool."""

    code = ErrorCode.STORAGE_VOL_EXIST


class DeviceMissingError(AsvirtError):
    """The domain has no such device (a detach or update names one it does not have)."""

    code = ErrorCode.DEVICE_MISSING


class NoDomainSnapshotError(AsvirtError):
    """No snapshot of the domain has that name (or the domain has no current snapshot)."""

    code = ErrorCode.NO_DOMAIN_SNAPSHOT


class ArgumentUnsupportedError(AsvirtError):
    """The driver supports the call, but not with these arguments for this domain (a guest
    agent call on a domain without an agent channel)."""

    code = ErrorCode.ARGUMENT_UNSUPPORTED


class AgentUnresponsiveError(AsvirtError):
    """The guest agent is not connected, or did not answer in time."""

    code = ErrorCode.AGENT_UNRESPONSIVE


class NoHostnameError(AsvirtError):
    """The guest's host name is not known where it was looked for (no DHCP lease names it)."""

    code = ErrorCode.NO_HOSTNAME


class NoDomainMetadataError(AsvirtError):
    """The domain has no such title, description or metadata element."""

    code = ErrorCode.NO_DOMAIN_METADATA


class NoSecretError(AsvirtError):
    """No secret with that UUID or usage exists, or the secret has no value yet."""

    code = ErrorCode.NO_SECRET


class InvalidSecretError(AsvirtError):
    """The secret may not be used so: a private secret's value asked for (libvirt's
    ``VIR_ERR_INVALID_SECRET``)."""

    code = ErrorCode.INVALID_SECRET
