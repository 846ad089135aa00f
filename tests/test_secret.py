"""The secret driver: secret XML, libvirt's rules, the files a QEMU node keeps, events, the
read-only socket, and the ``secret-*`` commands.

Every test runs on a real node: an embed root (files on disk) or ``test:///default`` (in
memory), and a real asvirtd for the socket tests. No QEMU is started here.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import asvirt
from asvirt.conf.secret import parse_secret_xml

from .daemon import Daemon
from .helpers import embed_uri, run_cli, write_config

U1 = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
U2 = "5ad2f6ad-7bd3-4fd1-8c8c-1b9ae3a5b0a1"

CEPH = f"""<secret ephemeral='no' private='no'>
  <uuid>{U1}</uuid>
  <description>the admin's key</description>
  <usage type='ceph'>
    <name>client.admin secret</name>
  </usage>
</secret>
"""

KINDS = (asvirt.EventKind.SECRET_LIFECYCLE, asvirt.EventKind.SECRET_VALUE_CHANGED)


def secret_xml(
    uuid: str = U2,
    usage: str = "<usage type='volume'><volume>/var/tmp/a.qcow2</volume></usage>",
    *,
    ephemeral: str = "no",
    private: str = "no",
) -> str:
    return (
        f"<secret ephemeral='{ephemeral}' private='{private}'><uuid>{uuid}</uuid>{usage}</secret>"
    )


# -- the XML -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "element"),
    [
        ("volume", "volume"),
        ("ceph", "name"),
        ("iscsi", "target"),
        ("tls", "name"),
        ("vtpm", "name"),
    ],
)
def test_secret_xml_round_trips_every_usage(usage: str, element: str):
    xml = (
        f"<secret ephemeral='yes' private='yes'>\n  <uuid>{U1}</uuid>\n"
        f"  <usage type='{usage}'>\n    <{element}>x y</{element}>\n  </usage>\n</secret>\n"
    )
    defn = parse_secret_xml(xml)
    assert (defn.usage_type.label, defn.usage_id, defn.ephemeral, defn.private) == (
        usage,
        "x y",
        True,
        True,
    )
    assert defn.to_xml() == xml
    assert parse_secret_xml(defn.to_xml()) == defn


def test_secret_xml_defaults_and_a_new_uuid():
    defn = parse_secret_xml("<secret/>")
    assert not defn.ephemeral and not defn.private
    assert defn.usage_type is asvirt.SecretUsageType.NONE
    assert defn.to_xml() == (
        f"<secret ephemeral='no' private='no'>\n  <uuid>{defn.uuid}</uuid>\n</secret>\n"
    )
    assert parse_secret_xml(CEPH).to_xml() == CEPH


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<secret><usage type='ceph'/></secret>", "Ceph usage specified, but name is missing"),
        ("<secret><usage type='iscsi'/></secret>", "iSCSI usage specified, but target is missing"),
        ("<secret><usage type='volume'/></secret>", "volume usage specified, but volume path"),
        ("<secret><usage type='nfs'><name>x</name></usage></secret>", "type='nfs'"),
        ("<secret><usage><name>x</name></usage></secret>", "unknown secret usage type"),
        ("<secret private='maybe'/>", "use yes or no"),
        ("<secret><uuid>nope</uuid></secret>", "invalid secret UUID 'nope'"),
        ("<secret><value>aGk=</value></secret>", "<value> is not supported"),
        ("<domain/>", "expected a <secret> document"),
    ],
)
def test_secret_xml_refuses_what_libvirt_refuses(xml: str, message: str):
    with pytest.raises(asvirt.XMLError, match=message):
        parse_secret_xml(xml)


# -- the driver, on both kinds of node ------------------------------------------------------------


@pytest.fixture(params=["embed", "test"])
async def conn(request, tmp_path: Path) -> AsyncIterator[asvirt.Connection]:
    uri = embed_uri(tmp_path / "root") if request.param == "embed" else "test:///default"
    async with asvirt.open(uri) as c:
        yield c


async def test_define_set_get_undefine_with_events(conn: asvirt.Connection):
    async with conn.subscribe(kinds=KINDS) as events:
        secret = await conn.secret_define_xml(CEPH)
        assert (secret.uuid, secret.name, secret.usage_id) == (U1, U1, "client.admin secret")
        assert secret.usage_type is asvirt.SecretUsageType.CEPH
        assert await secret.xml_desc() == CEPH
        with pytest.raises(asvirt.NoSecretError, match=f"secret '{U1}' does not have a value"):
            await secret.get_value()
        await secret.set_value(b"\x00key\xff")
        assert await secret.get_value() == b"\x00key\xff"
        found = await conn.lookup_secret_by_usage(
            asvirt.SecretUsageType.CEPH, "client.admin secret"
        )
        assert found == secret == await conn.lookup_secret_by_uuid(U1.upper())
        assert await conn.list_all_secrets() == [secret]
        # Redefining keeps the value.
        await conn.secret_define_xml(CEPH.replace("the admin's key", "still the admin's"))
        assert await secret.get_value() == b"\x00key\xff"
        await secret.undefine()
        seen = [ev.describe() for ev in [await events.__anext__() for _ in range(4)]]
    assert seen == [
        f"event 'lifecycle' for secret {U1}: Defined",
        f"event 'value-changed' for secret {U1}",
        f"event 'lifecycle' for secret {U1}: Defined",
        f"event 'lifecycle' for secret {U1}: Undefined",
    ]
    assert await conn.list_all_secrets() == []
    with pytest.raises(asvirt.NoSecretError, match=f"no secret with matching uuid '{U1}'"):
        await conn.lookup_secret_by_uuid(U1)
    with pytest.raises(asvirt.NoSecretError, match="no secret with matching usage 'x'"):
        await conn.lookup_secret_by_usage(asvirt.SecretUsageType.ISCSI, "x")


async def test_private_secret_values_are_never_given(conn: asvirt.Connection):
    secret = await conn.secret_define_xml(secret_xml(private="yes"))
    await secret.set_value(b"hush")
    with pytest.raises(asvirt.InvalidSecretError, match="secret is private") as err:
        await secret.get_value()
    assert err.value.code == asvirt.ErrorCode.INVALID_SECRET == 65
    # Nor can a redefinition make it public.
    with pytest.raises(asvirt.InternalError, match="cannot change private flag"):
        await conn.secret_define_xml(secret_xml(private="no"))
    assert [s.uuid for s in await conn.list_all_secrets(private=True)] == [U2]
    assert await conn.list_all_secrets(private=False) == []


async def test_usages_are_unique_and_fixed(conn: asvirt.Connection):
    await conn.secret_define_xml(CEPH)
    other = CEPH.replace(U1, U2)
    with pytest.raises(asvirt.InternalError, match=f"a secret with UUID {U1} already defined"):
        await conn.secret_define_xml(other)
    moved = CEPH.replace("client.admin secret", "client.other")
    with pytest.raises(asvirt.InternalError, match=f"UUID {U1} is already defined for use"):
        await conn.secret_define_xml(moved)
    assert [s.usage_id for s in await conn.list_all_secrets()] == ["client.admin secret"]
    # Secrets for no usage are told apart by UUID alone.
    await conn.secret_define_xml(f"<secret><uuid>{U2}</uuid></secret>")
    await conn.secret_define_xml("<secret/>")
    assert len(await conn.list_all_secrets()) == 3
    with pytest.raises(asvirt.XMLError):
        await conn.secret_define_xml("<secret><bogus/></secret>")
    assert len(await conn.list_all_secrets()) == 3


# -- what a QEMU node keeps on disk ---------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


async def test_persistent_secrets_are_stored_privately_and_ephemeral_ones_never(tmp_path: Path):
    root = tmp_path / "root"
    store = root / "etc" / "secrets"
    async with asvirt.open(embed_uri(root)) as conn:
        kept = await conn.secret_define_xml(CEPH)
        await kept.set_value(b"kept")
        gone = await conn.secret_define_xml(secret_xml(ephemeral="yes"))
        await gone.set_value(b"gone")
        assert sorted(p.name for p in store.iterdir()) == [f"{U1}.aes256gcm", f"{U1}.xml"]
        assert _mode(store) == 0o700
        assert {_mode(p) for p in store.iterdir()} == {0o600}
        _assert_encrypted(store / f"{U1}.aes256gcm", b"kept")
        # The key the node generated at its first value: once, private.
        key = root / "etc" / "secrets-encryption-key"
        assert _mode(key) == 0o600 and len(key.read_bytes()) == 32
    async with asvirt.open(embed_uri(root)) as conn:
        assert [s.uuid for s in await conn.list_all_secrets()] == [U1]
        assert await (await conn.lookup_secret_by_uuid(U1)).get_value() == b"kept"
        # Made ephemeral, it leaves the disk (and keeps its value in memory).
        await conn.secret_define_xml(CEPH.replace("ephemeral='no'", "ephemeral='yes'"))
        assert list(store.iterdir()) == []
        assert await (await conn.lookup_secret_by_uuid(U1)).get_value() == b"kept"
        # Made persistent again, its value is written with it.
        await conn.secret_define_xml(CEPH)
        _assert_encrypted(store / f"{U1}.aes256gcm", b"kept")
        await (await conn.lookup_secret_by_uuid(U1)).undefine()
        assert list(store.iterdir()) == []


def _assert_encrypted(path: Path, value: bytes) -> None:
    """``path`` holds ``value`` encrypted: neither it nor its base64 is in the file, and
    the file is base64 of more bytes than the value (a nonce and a tag)."""
    data = path.read_bytes()
    assert value not in data and base64.b64encode(value) not in data
    raw = base64.b64decode(data, validate=True)
    assert value not in raw and len(raw) == 12 + len(value) + 16


async def test_base64_values_are_read_and_written_encrypted_at_the_next_set(tmp_path: Path):
    root = tmp_path / "root"
    store = root / "etc" / "secrets"
    write_config(root, "[secret]\nencrypt_data = false\n")
    async with asvirt.open(embed_uri(root)) as conn:
        secret = await conn.secret_define_xml(CEPH)
        await secret.set_value(b"old value")
    # Written as before (libvirt's base64), and no key made for nothing.
    assert (store / f"{U1}.base64").read_bytes() == base64.b64encode(b"old value")
    assert not (root / "etc" / "secrets-encryption-key").exists()
    write_config(root, "")
    async with asvirt.open(embed_uri(root)) as conn:
        secret = await conn.lookup_secret_by_uuid(U1)
        assert await secret.get_value() == b"old value"
        assert not (store / f"{U1}.aes256gcm").exists()  # reading rewrites nothing
        await secret.set_value(b"new value")
        assert sorted(p.name for p in store.iterdir()) == [f"{U1}.aes256gcm", f"{U1}.xml"]
        _assert_encrypted(store / f"{U1}.aes256gcm", b"new value")
    # Encryption turned off again: the encrypted value is still read (the key is there).
    write_config(root, "[secret]\nencrypt_data = false\n")
    async with asvirt.open(embed_uri(root)) as conn:
        assert await (await conn.lookup_secret_by_uuid(U1)).get_value() == b"new value"
    # A crash between writing the new form and removing the old leaves both: the form being
    # written is the newer, and is read.
    (store / f"{U1}.base64").write_bytes(base64.b64encode(b"old value"))
    write_config(root, "")
    async with asvirt.open(embed_uri(root)) as conn:
        assert await (await conn.lookup_secret_by_uuid(U1)).get_value() == b"new value"


def _libvirt_cbc(key: bytes, value: bytes, iv: bytes) -> bytes:
    """A value file as libvirt 12.1 writes it (virSecretObjSaveData): base64 of a random IV
    and the AES-256-CBC ciphertext of the PKCS#7-padded value."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    data = enc.update(padder.update(value) + padder.finalize()) + enc.finalize()
    return base64.b64encode(iv + data)


async def test_secrets_copied_from_libvirt_open_with_its_key(tmp_path: Path):
    root = tmp_path / "root"
    store = root / "etc" / "secrets"
    key = tmp_path / "libvirt-key"
    # Fixed keys and IVs: CBC's garbage may end in valid padding (once in 256), so that the
    # wrong key's file decrypts to bytes that are known not to.
    key.write_bytes(bytes(range(32)))
    store.mkdir(parents=True, mode=0o700)
    (store / f"{U1}.xml").write_text(CEPH)
    value = _libvirt_cbc(key.read_bytes(), b"from libvirt", os.urandom(16))
    (store / f"{U1}.aes256cbc").write_bytes(value)
    (store / f"{U2}.xml").write_text(secret_xml())
    value = _libvirt_cbc(bytes(32), b"another key's", bytes(16))
    (store / f"{U2}.aes256cbc").write_bytes(value)
    write_config(root, f'[secret]\nsecrets_encryption_key = "{key}"\n')
    async with asvirt.open(embed_uri(root)) as conn:
        secret = await conn.lookup_secret_by_uuid(U1)
        assert await secret.get_value() == b"from libvirt"
        # A wrong key shows in the padding (nearly always, not always: CBC has no tag).
        with pytest.raises(asvirt.InvalidSecretError, match=f"{U2}.aes256cbc.*another key"):
            await (await conn.lookup_secret_by_uuid(U2)).get_value()
        await secret.set_value(b"from libvirt")  # now in asvirt's form
        assert sorted(p.name for p in store.iterdir() if U1 in p.name) == [
            f"{U1}.aes256gcm",
            f"{U1}.xml",
        ]


async def test_a_value_that_does_not_decrypt_is_a_clear_error(tmp_path: Path):
    root = tmp_path / "root"
    store = root / "etc" / "secrets"
    key = root / "etc" / "secrets-encryption-key"
    async with asvirt.open(embed_uri(root)) as conn:
        await (await conn.secret_define_xml(CEPH)).set_value(b"v1")
        await (await conn.secret_define_xml(secret_xml())).set_value(b"v2")
    good_key = key.read_bytes()
    key.write_bytes(bytes(32))  # another key
    async with asvirt.open(embed_uri(root)) as conn:
        # Still defined (it can be mended or undefined), but its value is refused, saying why.
        assert [s.uuid for s in await conn.list_all_secrets()] == [U1, U2]
        with pytest.raises(asvirt.InvalidSecretError) as info:
            await (await conn.lookup_secret_by_uuid(U1)).get_value()
        assert info.value.code == asvirt.ErrorCode.INVALID_SECRET
        assert f"cannot read the value of secret '{U1}'" in str(info.value)
        assert f"does not decrypt with the key {key}" in str(info.value)
        # A domain that needs it is refused the same way, before anything runs.
        dom = await conn.define_xml(ENCRYPTED)
        with pytest.raises(asvirt.InvalidSecretError, match=f"secret '{U2}'"):
            await dom.start(paused=True)
        assert not await dom.is_active()
        await dom.undefine()
    # The right key again reads both: nothing was rewritten.
    key.write_bytes(good_key)
    value_file = store / f"{U1}.aes256gcm"
    async with asvirt.open(embed_uri(root)) as conn:
        assert await (await conn.lookup_secret_by_uuid(U1)).get_value() == b"v1"
        # A damaged file (one bit), then one that is not even base64.
        data = bytearray(base64.b64decode(value_file.read_bytes()))
        data[-1] ^= 1
        value_file.write_bytes(base64.b64encode(bytes(data)))
        # A file of one secret copied onto another does not decrypt either (its UUID is bound).
        (store / f"{U2}.aes256gcm").write_bytes((store / f"{U1}.aes256gcm").read_bytes())
    async with asvirt.open(embed_uri(root)) as conn:
        for uuid in (U1, U2):
            with pytest.raises(asvirt.InvalidSecretError, match="another key, or a damaged file"):
                await (await conn.lookup_secret_by_uuid(uuid)).get_value()
        value_file.write_text("not base64!")
    async with asvirt.open(embed_uri(root)) as conn:
        secret = await conn.lookup_secret_by_uuid(U1)
        with pytest.raises(asvirt.InvalidSecretError, match="is not base64"):
            await secret.get_value()
        # Setting a value mends it.
        await secret.set_value(b"mended")
        assert await secret.get_value() == b"mended"
    async with asvirt.open(embed_uri(root)) as conn:
        assert await (await conn.lookup_secret_by_uuid(U1)).get_value() == b"mended"


async def test_a_bad_or_planted_key_is_refused_at_open(tmp_path: Path):
    root = tmp_path / "root"
    key = root / "etc" / "secrets-encryption-key"
    async with asvirt.open(embed_uri(root)) as conn:
        await (await conn.secret_define_xml(CEPH)).set_value(b"v")
    key.write_bytes(b"short")
    with pytest.raises(asvirt.InvalidArgError, match=f"key {key} has 5 bytes, not 32"):
        async with asvirt.open(embed_uri(root)):
            pass
    # A symlink planted where the key is is never followed (nor replaced).
    victim = tmp_path / "victim"
    victim.write_bytes(bytes(32))
    key.unlink()
    os.symlink(victim, key)
    with pytest.raises(asvirt.SystemCallError):
        async with asvirt.open(embed_uri(root)):
            pass
    assert key.is_symlink() and victim.read_bytes() == bytes(32)
    # A key file named in the configuration must exist.
    key.unlink()
    write_config(root, f'[secret]\nsecrets_encryption_key = "{tmp_path / "nokey"}"\n')
    with pytest.raises(asvirt.SystemCallError, match="nokey"):
        async with asvirt.open(embed_uri(root)):
            pass


async def test_the_key_named_in_the_configuration_is_used(tmp_path: Path):
    root = tmp_path / "root"
    own = tmp_path / "my-key"
    own.write_bytes(os.urandom(32))
    write_config(root, f'[secret]\nsecrets_encryption_key = "{own}"\n')
    async with asvirt.open(embed_uri(root)) as conn:
        await (await conn.secret_define_xml(CEPH)).set_value(b"the value")
    assert not (root / "etc" / "secrets-encryption-key").exists()
    _assert_encrypted(root / "etc" / "secrets" / f"{U1}.aes256gcm", b"the value")
    write_config(root, "")  # the key no longer named: the node has none of its own
    async with asvirt.open(embed_uri(root)) as conn:
        with pytest.raises(asvirt.InvalidSecretError, match="secrets-encryption-key is missing"):
            await (await conn.lookup_secret_by_uuid(U1)).get_value()


async def test_symlinks_planted_in_the_store_are_never_followed(tmp_path: Path):
    root = tmp_path / "root"
    store = root / "etc" / "secrets"
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    async with asvirt.open(embed_uri(root)) as conn:
        secret = await conn.secret_define_xml(CEPH)
        for suffix in ("aes256gcm", "base64"):
            os.symlink(victim, store / f"{U1}.{suffix}")
        await secret.set_value(b"new")
        assert victim.read_text() == "untouched"
        assert not (store / f"{U1}.aes256gcm").is_symlink()
        assert not (store / f"{U1}.base64").exists()
        # A definition that is a symlink is not read at the next open.
        other = tmp_path / "planted.xml"
        other.write_text(secret_xml())
        os.symlink(other, store / f"{U2}.xml")
        # Nor a value: its secret is there, without it, saying why.
        (store / f"{U1}.aes256gcm").unlink()
        os.symlink(victim, store / f"{U1}.aes256gcm")
    async with asvirt.open(embed_uri(root)) as conn:
        assert [s.uuid for s in await conn.list_all_secrets()] == [U1]
        with pytest.raises(asvirt.InvalidSecretError, match="aes256gcm: Too many levels"):
            await (await conn.lookup_secret_by_uuid(U1)).get_value()


# -- through a daemon ------------------------------------------------------------------------------


async def test_daemon_serves_secrets_and_its_read_only_socket_never_reads_values(tmp_path: Path):
    daemon = Daemon(tmp_path / "state").start()
    try:
        async with asvirt.open(daemon.uri) as conn, asvirt.open(daemon.uri_ro) as ro:
            async with ro.subscribe(kinds=KINDS) as events:
                secret = await conn.secret_define_xml(CEPH)
                await secret.set_value(b"v")
                assert await secret.get_value() == b"v"
                seen = await ro.lookup_secret_by_uuid(U1)
                assert await seen.xml_desc() == CEPH
                with pytest.raises(asvirt.OperationDeniedError, match="may reveal secrets"):
                    await seen.get_value()
                with pytest.raises(asvirt.OperationDeniedError):
                    await seen.set_value(b"w")
                with pytest.raises(asvirt.OperationDeniedError):
                    await seen.undefine()
                with trio.fail_after(10):
                    kinds = [(await events.__anext__()).kind for _ in range(2)]
                assert kinds == list(KINDS)
            assert await secret.get_value() == b"v"
    finally:
        assert daemon.stop() == 0


async def test_daemon_keeps_values_encrypted_with_its_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """asvirtd under systemd (LoadCredentialEncrypted=secrets-encryption-key:...): the key is
    the credential systemd decrypted into $CREDENTIALS_DIRECTORY; values survive restarts."""
    state = tmp_path / "state"
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "secrets-encryption-key").write_bytes(os.urandom(32))
    (creds / "secrets-encryption-key").chmod(0o400)  # as systemd leaves it
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    for value in (b"first", None):
        daemon = Daemon(state).start()
        try:
            async with asvirt.open(daemon.uri) as conn:
                if value is not None:
                    await (await conn.secret_define_xml(CEPH)).set_value(value)
                assert await (await conn.lookup_secret_by_uuid(U1)).get_value() == b"first"
        finally:
            assert daemon.stop() == 0
    _assert_encrypted(state / "etc" / "secrets" / f"{U1}.aes256gcm", b"first")
    assert not (state / "etc" / "secrets-encryption-key").exists()  # the credential served
    # Another credential (another host's, say): a clear error, and the daemon serves on.
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    (other / "secrets-encryption-key").write_bytes(os.urandom(32))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(other))
    daemon = Daemon(state).start()
    try:
        async with asvirt.open(daemon.uri) as conn:
            secret = await conn.lookup_secret_by_uuid(U1)
            with pytest.raises(asvirt.InvalidSecretError, match=f"secret '{U1}'.*another key"):
                await secret.get_value()
            assert [s.uuid for s in await conn.list_all_secrets()] == [U1]
    finally:
        assert daemon.stop() == 0


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_secret_commands_speak_virsh(tmp_path: Path):
    root = tmp_path / "root"
    xml = tmp_path / "s.xml"
    xml.write_text(CEPH)
    assert run_cli(root, "secret-define", str(xml)).stdout == f"Secret {U1} created\n\n"
    out = run_cli(root, "secret-list").stdout
    assert out == (
        " UUID                                   Usage\n"
        "------------------------------------------------------------------\n"
        f" {U1}   ceph client.admin secret\n\n"
    )
    proc = run_cli(root, "secret-set-value", U1, base64.b64encode(b"s3cret").decode())
    assert proc.stdout == "Secret value set\n\n"
    assert proc.stderr == "error: Passing secret value as command-line argument is insecure!\n"
    assert run_cli(root, "secret-get-value", U1).stdout == "czNjcmV0\n"
    raw = tmp_path / "raw"
    raw.write_bytes(b"pass phrase")
    assert run_cli(root, "secret-set-value", U1, "--file", str(raw), "--plain").stderr == ""
    assert run_cli(root, "secret-get-value", U1, "--plain").stdout == "pass phrase\n"
    proc = run_cli(
        root, "secret-set-value", U1, "--file", str(raw), "--base64", "eA==", check=False
    )
    assert proc.returncode == 1
    assert "Options --file and --base64 are mutually exclusive" in proc.stderr
    proc = run_cli(root, "secret-set-value", U1, "--base64", "not base64!", check=False)
    assert proc.returncode == 1 and "not valid base64" in proc.stderr
    assert run_cli(root, "secret-get-value", U1, "--plain").stdout == "pass phrase\n"
    assert run_cli(root, "secret-dumpxml", U1).stdout == CEPH + "\n"
    assert run_cli(root, "secret-undefine", U1).stdout == f"Secret {U1} deleted\n\n"
    proc = run_cli(root, "secret-get-value", U1, check=False)
    assert (proc.returncode, proc.stderr) == (1, f"error: failed to get secret '{U1}'\n")
    assert run_cli(root, "secret-list").stdout == (" UUID   Usage\n" + "-" * 15 + "\n\n")


# -- what a domain's definition names --------------------------------------------------------------

ENCRYPTED = f"""<domain type='qemu'><name>enc</name><memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/tmp/asvirt-no-such.qcow2'>
        <encryption format='luks'><secret type='passphrase' uuid='{U2}'/></encryption>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'>
      <encryption secret='{U1}'/></backend></tpm>
  </devices>
</domain>
"""


async def test_every_driver_refuses_a_start_whose_secrets_are_missing(conn: asvirt.Connection):
    dom = await conn.define_xml(ENCRYPTED)
    with pytest.raises(asvirt.NoSecretError, match=f"no secret with matching uuid '{U2}'"):
        await dom.start(paused=True)
    disk_secret = await conn.secret_define_xml(secret_xml())
    with pytest.raises(asvirt.NoSecretError, match=f"secret '{U2}' does not have a value"):
        await dom.start(paused=True)
    await disk_secret.set_value(b"disk")
    with pytest.raises(asvirt.NoSecretError, match=f"no secret with matching uuid '{U1}'"):
        await dom.start(paused=True)
    with pytest.raises(asvirt.NoSecretError):
        await conn.create_xml(ENCRYPTED.replace("<name>enc", "<name>enc2"))
    assert not await dom.is_active()
    assert "enc2" not in [d.name for d in await conn.list_all_domains()]
    await dom.undefine()


RBD = f"""<domain type='qemu'><name>rbd</name><memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image'><host name='127.0.0.1'/>
        <auth username='admin'><secret type='ceph' uuid='{U1}'/></auth></source>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""

USAGES = {
    "volume": "<volume>/var/tmp/v.qcow2</volume>",
    "ceph": "<name>c</name>",
    "iscsi": "<target>t</target>",
    "tls": "<name>t</name>",
    "vtpm": "<name>v</name>",
}


def _usage(kind: str) -> str:
    return f"<usage type='{kind}'>{USAGES[kind]}</usage>"


@pytest.mark.parametrize(
    ("xml", "uuid", "given", "needed"),
    [
        (ENCRYPTED, U2, "ceph", "volume"),  # a disk's <encryption>
        (ENCRYPTED, U1, "volume", "vtpm"),  # a vTPM's state (the disk's secret being right)
        (RBD, U1, "iscsi", "ceph"),  # an RBD disk's <auth>
    ],
)
async def test_a_secret_named_by_uuid_must_be_for_what_needs_it(
    conn: asvirt.Connection, xml: str, uuid: str, given: str, needed: str
):
    """libvirt's rule (virSecretGetSecretString): the usage type of a secret looked up by UUID
    is the one its referrer needs, or the start is refused, INVALID_ARG."""
    dom = await conn.define_xml(xml)
    if uuid == U1 and xml is ENCRYPTED:
        disk = await conn.secret_define_xml(secret_xml(U2))
        await disk.set_value(b"disk")
    wrong = await conn.secret_define_xml(secret_xml(uuid, _usage(given)))
    await wrong.set_value(b"value")
    with pytest.raises(asvirt.InvalidArgError) as info:
        await dom.start(paused=True)
    assert str(info.value) == (
        f"secret with uuid {uuid} is of type '{given}' not expected '{needed}' type"
    )
    assert info.value.code == asvirt.ErrorCode.INVALID_ARG
    assert not await dom.is_active()
    await wrong.undefine()
    right = await conn.secret_define_xml(secret_xml(uuid, _usage(needed)))
    await right.set_value(b"value")
    if conn.uri.startswith("test:"):  # the simulated guest starts (no image to open)
        if xml is ENCRYPTED and uuid == U2:  # the vTPM's secret: one for no usage passes
            await (await conn.secret_define_xml(secret_xml(U1, ""))).set_value(b"tpm")
        await dom.start(paused=True)
        await dom.destroy()
    await dom.undefine()


async def test_the_test_driver_starts_it_once_its_secrets_exist():
    async with asvirt.open("test:///default") as conn:
        dom = await conn.define_xml(ENCRYPTED)
        for uuid in (U1, U2):
            secret = await conn.secret_define_xml(f"<secret><uuid>{uuid}</uuid></secret>")
            await secret.set_value(b"v")
        await dom.start()
        assert await dom.is_active()
        await dom.destroy()
