"""The secret driver of a node: passphrases and keys that domains' XML names by UUID or usage
(libvirt's ``secret_driver.c`` and ``virsecretobj.c``).

One driver for every node: :class:`SecretDriver` keeps the table, libvirt's rules and the
events; a :class:`SecretStore` (a QEMU node's) keeps persistent secrets on disk, and a node
without one (the test driver's) keeps them in memory only.

The rules: a secret is named by its UUID, and no two secrets share a usage (type and id).
Redefining a secret keeps its value; it may not change its usage nor make a private secret
public. An *ephemeral* secret is never written to disk; a *private* one's value is never given
to a client (:meth:`SecretDriver.secret_get_value` refuses it, as libvirt does), though the
node itself reads it (:meth:`SecretDriver.secret_value`) to hand it to QEMU or swtpm.

Files (``ROOT/etc/secrets``, as libvirt's ``/etc/libvirt/secrets``; the directory 0700):
``UUID.xml`` (the definition) and the value, each 0600, written atomically; a symlink planted
at any of them is never followed. The value is encrypted at rest, as libvirt 12.1 does
(``[secret] encrypt_data``, on by default): ``UUID.aes256gcm`` holds, in base64, a random
96-bit nonce and the value's AES-256-GCM ciphertext and tag, with the secret's UUID as the
associated data (a file copied onto another secret does not decrypt). GCM rather than
libvirt's CBC (``UUID.aes256cbc``): its tag tells a wrong key or a damaged file from a value,
where CBC would hand back garbage one time in 256. Without encryption the value is
``UUID.base64``, as before; values of either form are read, and writing one removes the
other. libvirt's ``UUID.aes256cbc`` is read too (and replaced by ours at the next set), so
that secrets copied from libvirt's ``/etc/libvirt/secrets`` open with its key. The key (32
bytes) is the file ``[secret] secrets_encryption_key`` names, else the systemd credential
``secrets-encryption-key``, else ``ETC/secrets-encryption-key``, which the node generates
once. A value that does not decrypt leaves its secret defined, without a value: using it
fails with InvalidSecretError naming it and why, until a value is set again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from .. import fsutil
from ..conf.names import canonical_uuid
from ..conf.secret import SecretDef, parse_secret_xml
from ..config import SecretConfig
from ..errors import (
    AsvirtError,
    InternalError,
    InvalidArgError,
    InvalidSecretError,
    NoSecretError,
    SystemCallError,
    XMLError,
)
from ..events import EventBus, EventKind, SecretLifecycleEvent
from ..log import get_logger
from .base import SecretRef, SecretUsageType
from .layout import NodeDirs

log = get_logger("asvirt.secret")

#: The largest value a secret may hold (libvirt keeps values in memory too; a passphrase or
#: a key is a few bytes).
MAX_VALUE_BYTES = 64 * 1024


#: The systemd credential holding the key (libvirt's name), in ``$CREDENTIALS_DIRECTORY``.
KEY_CREDENTIAL = "secrets-encryption-key"
#: The length of the key: AES-256.
KEY_BYTES = 32
#: The suffixes of a value's file: encrypted, and in plain base64.
ENCRYPTED_SUFFIX = ".aes256gcm"
BASE64_SUFFIX = ".base64"
#: libvirt 12.1's encrypted form (AES-256-CBC), read so that its secrets can be brought over
#: with its key; never written.
LIBVIRT_SUFFIX = ".aes256cbc"
_NONCE_BYTES = 12


class SecretObj:
    """One secret of the table."""

    __slots__ = ("defn", "value", "value_error")

    def __init__(
        self, defn: SecretDef, value: bytes | None = None, value_error: str | None = None
    ) -> None:
        self.defn = defn
        #: None until a value is set.
        self.value = value
        #: Why the stored value could not be read (then ``value`` is None).
        self.value_error = value_error

    def checked_value(self) -> bytes:
        """The value; InvalidSecretError if the stored one could not be read, NoSecretError
        if none was set."""
        if self.value is None:
            if self.value_error is not None:
                raise InvalidSecretError(self.value_error)
            raise NoSecretError(f"secret '{self.defn.uuid}' does not have a value")
        return self.value

    @property
    def ref(self) -> SecretRef:
        return SecretRef(self.defn.uuid, self.defn.usage_type, self.defn.usage_id)


class SecretStore:
    """Where a node keeps its persistent secrets (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        tops: tuple[tuple[str, Path], ...] = (),
        config: SecretConfig | None = None,
    ) -> None:
        etc = NodeDirs(root, tops).top("etc")
        self.dir = etc / "secrets"
        self.settings = config if config is not None else SecretConfig()
        #: The key the node generates when it has no other (see :meth:`key_path`).
        self.own_key = etc / KEY_CREDENTIAL
        #: The key, read by :meth:`load` (None: no key, values are written in base64).
        self.key: bytes | None = None

    def config(self, uuid: str) -> Path:
        return self.dir / f"{uuid}.xml"

    def value_file(self, uuid: str, suffix: str = BASE64_SUFFIX) -> Path:
        return self.dir / f"{uuid}{suffix}"

    # -- the key -------------------------------------------------------------------------------

    def key_path(self) -> Path:
        """Where the key is: the setting, else the systemd credential when there is one,
        else the node's own."""
        if self.settings.secrets_encryption_key:
            return Path(self.settings.secrets_encryption_key)
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds and os.path.lexists(os.path.join(creds, KEY_CREDENTIAL)):
            return Path(creds) / KEY_CREDENTIAL
        return self.own_key

    def load_key(self, generate: bool = False) -> bytes | None:
        """Read the key; None if the node's own does not exist yet, which ``generate``
        creates (InvalidArgError for a key of the wrong length; OSError as ``open``, also
        for a key file that is named but missing, or a symlink)."""
        path = self.key_path()
        try:
            key = fsutil.read_nofollow(path, limit=4096)
        except FileNotFoundError:
            if path != self.own_key:
                raise
            if not generate:
                return None
            fsutil.create_once(path, os.urandom(KEY_BYTES), mode=0o600)
            log.info("generated the secrets encryption key", path=str(path))
            key = fsutil.read_nofollow(path, limit=4096)
        if len(key) != KEY_BYTES:
            raise InvalidArgError(
                f"the secrets encryption key {path} has {len(key)} bytes, not {KEY_BYTES}"
            )
        return key

    def _encrypt(self, uuid: str, value: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        assert self.key is not None
        nonce = os.urandom(_NONCE_BYTES)
        return base64.b64encode(nonce + AESGCM(self.key).encrypt(nonce, value, uuid.encode()))

    def _decrypt(self, uuid: str, path: Path, data: bytes) -> bytes:
        """The value in an encrypted file (ours, or libvirt's ``.aes256cbc``: a 16-byte IV
        and the PKCS#7-padded CBC ciphertext); ValueError saying why it cannot be read."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if self.key is None:
            raise ValueError(
                f"its value ({path}) is encrypted but the key {self.key_path()} is missing"
            )
        try:
            raw = base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            raise ValueError(f"its value file {path} is not base64") from None
        wrong = ValueError(
            f"its value ({path}) does not decrypt with the key {self.key_path()}: "
            "another key, or a damaged file"
        )
        if path.suffix == LIBVIRT_SUFFIX:
            if len(raw) < 32 or len(raw) % 16:
                raise ValueError(f"its value file {path} is not AES-256-CBC data")
            return _cbc_decrypt(self.key, raw[:16], raw[16:], wrong)
        if len(raw) < _NONCE_BYTES + 16:
            raise ValueError(f"its value file {path} is too short to be encrypted")
        try:
            return AESGCM(self.key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], uuid.encode())
        except InvalidTag:
            raise wrong from None

    # -- the files -----------------------------------------------------------------------------

    def _read_value(self, uuid: str) -> tuple[bytes | None, str | None]:
        """The stored value of ``uuid`` (None if there is none), or why it cannot be read.
        The form being written is read first: after a crash between writing one and
        removing the other, it is the newer."""
        order = (ENCRYPTED_SUFFIX, BASE64_SUFFIX)
        if not self.settings.encrypt_data:
            order = order[::-1]
        for suffix in (*order, LIBVIRT_SUFFIX):  # libvirt's is never newer than ours
            path = self.value_file(uuid, suffix)
            try:
                try:
                    data = fsutil.read_nofollow(path, limit=2 * MAX_VALUE_BYTES)
                except FileNotFoundError:
                    continue
                except OSError as err:  # a symlink planted there (ELOOP), a directory...
                    raise ValueError(f"cannot read {path}: {err.strerror}") from None
                if suffix != BASE64_SUFFIX:
                    return self._decrypt(uuid, path, data), None
                try:
                    return base64.b64decode(data.strip(), validate=True), None
                except binascii.Error:
                    raise ValueError(f"its value file {path} is not base64") from None
            except ValueError as err:
                log.error("cannot read a secret's value", uuid=uuid, path=str(path), error=str(err))
                return None, f"cannot read the value of secret '{uuid}': {err}"
        return None, None

    def load(self) -> list[SecretObj]:
        """The stored secrets (an unreadable definition is logged and skipped; a value that
        cannot be read leaves its secret without one, and the reason)."""
        fsutil.ensure_private_dir(self.dir)
        self.key = self.load_key()
        found = []
        for path in sorted(self.dir.glob("*.xml")):
            try:
                defn = parse_secret_xml(fsutil.read_nofollow(path, limit=1024 * 1024))
                if defn.uuid != path.stem:
                    raise XMLError(f"its UUID '{defn.uuid}' differs from its file name")
                if defn.ephemeral:
                    raise XMLError("an ephemeral secret is never stored")
                found.append(SecretObj(defn, *self._read_value(defn.uuid)))
            except (AsvirtError, OSError, ValueError) as err:
                log.error("ignoring secret", path=str(path), error=str(err))
        return found

    def save(self, obj: SecretObj, with_value: bool) -> None:
        """Store ``obj``'s definition (and value): the value first, so that a definition
        on disk never lacks the value a crash would have lost."""
        uuid = obj.defn.uuid
        if with_value and obj.value is not None:
            self.save_value(obj)
        fsutil.atomic_write(self.config(uuid), obj.defn.to_xml().encode(), mode=0o600)

    def save_value(self, obj: SecretObj) -> None:
        """Write the value (encrypted when ``encrypt_data`` is on), then remove its other
        form."""
        assert obj.value is not None
        uuid = obj.defn.uuid
        if self.settings.encrypt_data and self.key is None:
            self.key = self.load_key(generate=True)  # the first value written
        if self.settings.encrypt_data and self.key is not None:
            suffix, other, data = ENCRYPTED_SUFFIX, BASE64_SUFFIX, self._encrypt(uuid, obj.value)
        else:
            suffix, other, data = BASE64_SUFFIX, ENCRYPTED_SUFFIX, base64.b64encode(obj.value)
        fsutil.atomic_write(self.value_file(uuid, suffix), data, mode=0o600)
        removed = [fsutil.remove(self.value_file(uuid, s)) for s in (other, LIBVIRT_SUFFIX)]
        if any(removed):
            fsutil.fsync_dir(self.dir)

    def delete(self, uuid: str) -> None:
        """Remove the definition first: a value without one is ignored at load."""
        fsutil.remove(self.config(uuid))
        for suffix in (ENCRYPTED_SUFFIX, BASE64_SUFFIX, LIBVIRT_SUFFIX):
            fsutil.remove(self.value_file(uuid, suffix))
        fsutil.fsync_dir(self.dir)


def _cbc_decrypt(key: bytes, iv: bytes, data: bytes, wrong: ValueError) -> bytes:
    """libvirt's AES-256-CBC with PKCS#7 padding undone; ``wrong`` if the padding is not
    (CBC has no tag: a wrong key goes unnoticed when its garbage happens to end in valid
    padding, about one time in 256)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(data) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise wrong from None


class SecretDriver:
    """A node's secrets: the table, libvirt's rules, the events (the module docstring)."""

    def __init__(self, bus: EventBus, store: SecretStore | None = None) -> None:
        self.bus = bus
        self.store = store
        self._by_uuid: dict[str, SecretObj] = {}
        # Secrets are few and their calls quick: one lock orders every change.
        self._lock = trio.Lock()

    async def load(self) -> None:
        """Read the stored secrets (at node open)."""
        if self.store is None:
            await trio.lowlevel.checkpoint()
            return
        try:
            found = await trio.to_thread.run_sync(self.store.load)
        except OSError as err:
            raise SystemCallError.from_oserror(
                err, "read secrets from", err.filename or self.store.dir
            ) from None
        for obj in found:
            if self._by_usage(obj.defn.usage_type, obj.defn.usage_id) is not None:
                log.error("ignoring secret: its usage is taken", uuid=obj.defn.uuid)
                continue
            self._by_uuid[obj.defn.uuid] = obj

    # -- the table ---------------------------------------------------------------------------

    def _obj(self, uuid: str) -> SecretObj:
        key = canonical_uuid(uuid) if isinstance(uuid, str) else uuid
        obj = self._by_uuid.get(key)
        if obj is None:
            raise NoSecretError(f"no secret with matching uuid '{uuid}'")
        return obj

    def _by_usage(self, usage_type: SecretUsageType, usage_id: str) -> SecretObj | None:
        if usage_type is SecretUsageType.NONE:
            return None  # secrets for no usage are told apart by UUID only
        for obj in self._by_uuid.values():
            if obj.defn.usage_type is usage_type and obj.defn.usage_id == usage_id:
                return obj
        return None

    def _publish(self, obj: SecretObj, kind: EventKind, type_: SecretLifecycleEvent | None) -> None:
        uuid = obj.defn.uuid
        data = {"usage_type": int(obj.defn.usage_type), "usage_id": obj.defn.usage_id}
        self.bus.publish(domain=uuid, uuid=uuid, kind=kind, type=type_, data=data)

    async def _stored(self, what: str, fn: Callable[..., None], *args: object) -> None:
        """Run a store write in a thread; an OSError is a SystemCallError naming ``what``."""
        try:
            await trio.to_thread.run_sync(fn, *args)
        except OSError as err:
            assert self.store is not None
            raise SystemCallError.from_oserror(err, what, err.filename or self.store.dir) from None

    # -- what the node's domains use ---------------------------------------------------------

    def secret_value(
        self, uuid: str | None, usage_type: SecretUsageType, usage_id: str | None
    ) -> tuple[str, bytes]:
        """The UUID and value of a secret a domain names (by UUID, else by usage), private
        or not; NoSecretError if there is none or it has no value.

        A secret named by UUID must be for ``usage_type``, what the referrer needs (a disk's
        ``<encryption>`` a ``volume`` secret, iSCSI ``iscsi``, RBD ``ceph``, TLS ``tls``, a
        vTPM ``vtpm``): InvalidArgError otherwise, with libvirt's words. As libvirt, a secret
        for no usage passes (it names no usage to disagree with)."""
        if uuid is not None:
            obj = self._obj(uuid)
            have = obj.defn.usage_type
            if have is not SecretUsageType.NONE and have is not usage_type:
                raise InvalidArgError(
                    f"secret with uuid {obj.defn.uuid} is of type '{have.label}' not expected "
                    f"'{SecretUsageType(usage_type).label}' type"
                )
        else:
            found = self._by_usage(usage_type, usage_id or "")
            if found is None:
                raise NoSecretError(
                    f"no secret with matching usage '{usage_id}'"
                    if usage_type is not SecretUsageType.NONE
                    else "a secret is named neither by UUID nor by usage"
                )
            obj = found
        return obj.defn.uuid, obj.checked_value()

    # -- the SecretCalls ---------------------------------------------------------------------

    async def list_all_secrets(
        self, ephemeral: bool | None = None, private: bool | None = None
    ) -> list[SecretRef]:
        await trio.lowlevel.checkpoint()
        return [
            obj.ref
            for _, obj in sorted(self._by_uuid.items())
            if (ephemeral is None or obj.defn.ephemeral == ephemeral)
            and (private is None or obj.defn.private == private)
        ]

    async def lookup_secret_by_uuid(self, uuid: str) -> SecretRef:
        await trio.lowlevel.checkpoint()
        return self._obj(uuid).ref

    async def lookup_secret_by_usage(self, usage_type: SecretUsageType, usage_id: str) -> SecretRef:
        await trio.lowlevel.checkpoint()
        obj = self._by_usage(SecretUsageType(usage_type), usage_id)
        if obj is None:
            raise NoSecretError(f"no secret with matching usage '{usage_id}'")
        return obj.ref

    async def secret_define_xml(self, xml: str) -> SecretRef:
        """Define a secret, or redefine one (its value is kept); DEFINED."""
        defn = parse_secret_xml(xml)
        async with self._lock:
            old = self._by_uuid.get(defn.uuid)
            same_usage = self._by_usage(defn.usage_type, defn.usage_id)
            if old is not None:
                if (old.defn.usage_type, old.defn.usage_id) != (defn.usage_type, defn.usage_id):
                    raise InternalError(
                        f"a secret with UUID {defn.uuid} is already defined for use with "
                        f"{old.defn.usage_id}"
                    )
                if old.defn.private and not defn.private:
                    raise InternalError("cannot change private flag on existing secret")
            elif same_usage is not None:
                raise InternalError(
                    f"a secret with UUID {same_usage.defn.uuid} already defined for use with "
                    f"{defn.usage_id}"
                )
            obj = SecretObj(defn)
            if old is not None:
                obj.value, obj.value_error = old.value, old.value_error
            if self.store is not None:
                if not defn.ephemeral:
                    # A secret that was ephemeral has its value written now.
                    with_value = old is None or old.defn.ephemeral
                    await self._stored("save secret to", self.store.save, obj, with_value)
                elif old is not None and not old.defn.ephemeral:
                    await self._stored("remove secret from", self.store.delete, defn.uuid)
            self._by_uuid[defn.uuid] = obj
            self._publish(obj, EventKind.SECRET_LIFECYCLE, SecretLifecycleEvent.DEFINED)
            return obj.ref

    async def secret_xml_desc(self, uuid: str) -> str:
        await trio.lowlevel.checkpoint()
        return self._obj(uuid).defn.to_xml()

    async def secret_set_value(self, uuid: str, value: bytes) -> None:
        """Set the value (stored unless the secret is ephemeral); VALUE_CHANGED."""
        if not isinstance(value, bytes | bytearray):
            raise InvalidArgError("a secret's value is bytes")
        if len(value) > MAX_VALUE_BYTES:
            raise InvalidArgError(f"a secret's value is at most {MAX_VALUE_BYTES} bytes")
        async with self._lock:
            obj = self._obj(uuid)
            updated = SecretObj(obj.defn, bytes(value))
            if self.store is not None and not obj.defn.ephemeral:
                await self._stored("save secret value to", self.store.save_value, updated)
            obj.value, obj.value_error = updated.value, None
            self._publish(obj, EventKind.SECRET_VALUE_CHANGED, None)

    async def secret_get_value(self, uuid: str) -> bytes:
        """The value; InvalidSecretError for a private secret (as libvirt), NoSecretError
        when none was set."""
        await trio.lowlevel.checkpoint()
        obj = self._obj(uuid)
        if obj.defn.private:
            raise InvalidSecretError("secret is private")
        return obj.checked_value()

    async def secret_undefine(self, uuid: str) -> None:
        """Remove the secret and its value; UNDEFINED."""
        async with self._lock:
            obj = self._obj(uuid)
            if self.store is not None and not obj.defn.ephemeral:
                await self._stored("remove secret from", self.store.delete, obj.defn.uuid)
            del self._by_uuid[obj.defn.uuid]
            self._publish(obj, EventKind.SECRET_LIFECYCLE, SecretLifecycleEvent.UNDEFINED)


@contextlib.contextmanager
def secret_pipes(values: dict[str, bytes]) -> Iterator[dict[str, int]]:
    """Each value in a pipe of its own, written and closed: the read ends by secret id, for
    QEMU to inherit; ours are closed when the block ends (after the spawn)."""
    fds: dict[str, int] = {}
    try:
        for secret_id, value in values.items():
            r, w = os.pipe2(os.O_CLOEXEC)
            fds[secret_id] = r
            try:
                # A pipe holds 64 KiB: no value is larger (MAX_VALUE_BYTES), so this never
                # blocks; and the value must be whole before QEMU reads to the end.
                written = os.write(w, value) if value else 0
                if written != len(value):
                    raise OSError(f"secret '{secret_id}' did not fit in a pipe")
            finally:
                os.close(w)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


__all__ = [
    "BASE64_SUFFIX",
    "ENCRYPTED_SUFFIX",
    "KEY_BYTES",
    "KEY_CREDENTIAL",
    "LIBVIRT_SUFFIX",
    "MAX_VALUE_BYTES",
    "SecretDriver",
    "SecretObj",
    "SecretStore",
    "secret_pipes",
]
