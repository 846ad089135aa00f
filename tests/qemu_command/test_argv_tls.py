"""Command lines of TLS: the ``tls-creds-x509`` objects of NBD disks, VNC and TCP chardevs,
SPICE's ``tls-port``/``x509-dir``/``tls-channel``, as libvirt builds them from qemu.conf
(here asvirt's ``[qemu]`` settings, :class:`TlsConfig`); what the configuration does not
give is refused; the check at start names a missing certificate file. Where QEMU can start
the argv without a peer (VNC, SPICE, a listening chardev), it is launched paused over real
certificates and asked what it built."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from qemu_launch import launch_paused

from asvirt.conf.domain import parse_domain_xml
from asvirt.config import QemuConfig
from asvirt.drivers.qemu.tls import TlsConfig, check_tls_files
from asvirt.errors import ConfigUnsupportedError, InvalidArgError, OperationFailedError
from tests.caps import Caps
from tests.helpers import (
    NET_DISK_SOURCES,
    argv_of,
    blockdevs,
    dom,
    free_tcp_port,
    make_tls_dir,
    net_disk,
    opts,
)

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls_dir(tmp_path_factory.mktemp("pki"))


def objects(argv: list[str]) -> dict[str, dict[str, Any]]:
    """The TLS credentials ``-object``s of ``argv`` by id."""
    objs = [json.loads(o) for o in opts(argv, "-object") if o.startswith("{")]
    return {o["id"]: o for o in objs if o["qom-type"] == "tls-creds-x509"}


def creds(obj_id: str, directory: Path, endpoint: str, verify: bool) -> dict[str, Any]:
    return {
        "qom-type": "tls-creds-x509",
        "id": obj_id,
        "dir": str(directory),
        "endpoint": endpoint,
        "verify-peer": verify,
    }


def test_config_names_the_directories() -> None:
    cfg = QemuConfig(default_tls_x509_cert_dir="/pki", vnc_tls=True, nbd_tls_x509_cert_dir="/n")
    tls = TlsConfig.from_qemu(cfg)
    assert (tls.vnc, tls.vnc_dir, tls.nbd_dir, tls.spice_dir) == (True, "/pki", "/n", "/pki")
    assert TlsConfig.from_qemu(QemuConfig()) == TlsConfig()  # all off, /etc/pki/qemu
    with pytest.raises(InvalidArgError, match="spice_tls_x509_cert_dir 'pki'"):
        QemuConfig(spice_tls_x509_cert_dir="pki")


# -- NBD ------------------------------------------------------------------------------------------


def test_nbd_disk_over_tls_is_a_client_with_the_host_it_must_be(caps: Caps) -> None:
    tls = TlsConfig(nbd_dir="/pki/nbd")
    argv = argv_of(caps, net_disk(NET_DISK_SOURCES["nbd-tls"]), tls=tls)
    node = blockdevs(argv)[0]
    assert node["tls-creds"] == "objlibvirt-1-storage_tls0"
    assert node["tls-hostname"] == "nbd.example.org"
    assert objects(argv)["objlibvirt-1-storage_tls0"] == creds(
        "objlibvirt-1-storage_tls0", Path("/pki/nbd"), "client", True
    )
    # The object comes before the node that names it.
    assert argv.index(opts(argv, "-object")[-1]) < argv.index(opts(argv, "-blockdev")[0])


@pytest.mark.parametrize(
    ("tls_attr", "nbd_tls", "expected"),
    [("", False, False), ("", True, True), (" tls='no'", True, False), (" tls='yes'", False, True)],
)
def test_nbd_tls_default_and_the_disk_saying_otherwise(
    caps: Caps, tls_attr: str, nbd_tls: bool, expected: bool
) -> None:
    source = f"<source protocol='nbd' name='e'{tls_attr}><host name='127.0.0.1'/></source>"
    argv = argv_of(caps, net_disk(source), tls=TlsConfig(nbd=nbd_tls))
    assert ("tls-creds" in blockdevs(argv)[0]) is expected
    assert bool(objects(argv)) is expected


# -- VNC ------------------------------------------------------------------------------------------


def test_vnc_tls_creds_launch_as_vencrypt_x509(caps: Caps, tmp_path: Path, pki: Path) -> None:
    xml = dom("<graphics type='vnc' port='-1' autoport='yes'/>")
    assert "tls-creds" not in opts(argv_of(caps, xml, tmp_path), "-vnc")[0]
    argv = argv_of(caps, xml, tmp_path, tls=TlsConfig(vnc=True, vnc_dir=str(pki)))
    assert opts(argv, "-vnc") == ["127.0.0.1:0,to=99,tls-creds=vnc-tls-creds0,audiodev=audio1"]
    assert objects(argv) == {"vnc-tls-creds0": creds("vnc-tls-creds0", pki, "server", True)}
    got = launch_paused(argv, tmp_path, extra={"query-vnc-servers": {}})
    (server,) = got.extra["query-vnc-servers"]
    assert (server["auth"], server["vencrypt"]) == ("vencrypt", "x509-none")
    # A display on no listener has no TLS to speak.
    none = dom("<graphics type='vnc'><listen type='none'/></graphics>")
    assert not objects(argv_of(caps, none, tmp_path, tls=TlsConfig(vnc=True)))


def test_vnc_verify_off(caps: Caps, tmp_path: Path) -> None:
    xml = dom("<graphics type='vnc' port='5901' autoport='no'/>")
    argv = argv_of(caps, xml, tmp_path, tls=TlsConfig(vnc=True, vnc_verify=False))
    assert objects(argv)["vnc-tls-creds0"]["verify-peer"] is False


# -- SPICE ----------------------------------------------------------------------------------------


def test_spice_tls_port_x509_dir_and_channels(caps: Caps, tmp_path: Path, pki: Path) -> None:
    port, tls_port = free_tcp_port(), free_tcp_port()
    xml = dom(
        f"<graphics type='spice' port='{port}' tlsPort='{tls_port}' autoport='no' "
        "defaultMode='secure'><listen type='address' address='127.0.0.1'/>"
        "<channel name='main' mode='secure'/><channel name='inputs' mode='insecure'/>"
        "</graphics><video><model type='qxl'/></video>"
    )
    argv = argv_of(caps, xml, tmp_path, tls=TlsConfig(spice=True, spice_dir=str(pki)))
    assert opts(argv, "-spice") == [
        f"port={port},tls-port={tls_port},addr=127.0.0.1,x509-dir={pki},tls-channel=default,"
        "disable-ticketing=on,tls-channel=main,plaintext-channel=inputs,seamless-migration=on"
    ]
    got = launch_paused(argv, tmp_path, extra={"query-spice": {}})
    spice = got.extra["query-spice"]
    assert (spice["port"], spice["tls-port"]) == (port, tls_port)


def test_spice_autoport_gets_a_tls_port_too(caps: Caps, tmp_path: Path) -> None:
    xml = dom("<graphics type='spice' autoport='yes'/>")
    plain = opts(argv_of(caps, xml, tmp_path), "-spice")[0]
    assert "tls-port" not in plain and "x509-dir" not in plain
    spice = opts(argv_of(caps, xml, tmp_path, tls=TlsConfig(spice=True)), "-spice")[0]
    fields = dict(kv.split("=", 1) for kv in spice.split(","))
    assert int(fields["tls-port"]) >= 5900 and fields["tls-port"] != fields["port"]
    assert fields["x509-dir"] == "/etc/pki/qemu"
    # Every channel plain: no TLS port is taken.
    plain_only = dom("<graphics type='spice' autoport='yes' defaultMode='insecure'/>")
    spice = opts(argv_of(caps, plain_only, tmp_path, tls=TlsConfig(spice=True)), "-spice")[0]
    assert "tls-port" not in spice and "plaintext-channel=default" in spice


@pytest.mark.parametrize(
    ("graphics", "match"),
    [
        ("<graphics type='spice' port='5950' tlsPort='5951'/>", "spice TLS port set"),
        ("<graphics type='spice' port='5950' tlsPort='-1'/>", "Auto allocation of spice TLS"),
        (
            "<graphics type='spice' autoport='yes'><channel name='main' mode='secure'/></graphics>",
            "secure channels set",
        ),
        ("<graphics type='spice' autoport='yes' defaultMode='secure'/>", "secure channels set"),
    ],
)
def test_spice_tls_the_configuration_turns_off_is_refused(
    caps: Caps, tmp_path: Path, graphics: str, match: str
) -> None:
    xml = dom(graphics)
    parse_domain_xml(xml)  # defined: the refusal is the start's, as libvirt's
    with pytest.raises(ConfigUnsupportedError, match=f"(?i){match}.*spice_tls"):
        argv_of(caps, xml, tmp_path)


def test_spice_secure_channel_needs_a_tls_port(caps: Caps, tmp_path: Path) -> None:
    xml = dom(
        "<graphics type='spice' port='5950' autoport='no'>"
        "<channel name='main' mode='secure'/></graphics>"
    )
    with pytest.raises(ConfigUnsupportedError, match="TLS port is not provided"):
        argv_of(caps, xml, tmp_path, tls=TlsConfig(spice=True))


# -- character devices ----------------------------------------------------------------------------


def test_tcp_chardevs_over_tls(caps: Caps, tmp_path: Path, pki: Path) -> None:
    port = free_tcp_port()
    xml = dom(
        f"<serial type='tcp'><source mode='bind' host='127.0.0.1' service='{port}' tls='yes'/>"
        "<target port='0'/></serial>"
        "<channel type='tcp'><source mode='connect' host='127.0.0.1' service='9'/>"
        "<target type='virtio' name='org.asvirt.c'/></channel>"
        "<channel type='tcp'><source mode='connect' host='127.0.0.1' service='9' tls='no'/>"
        "<target type='virtio' name='org.asvirt.d'/></channel>"
    )
    tls = TlsConfig(chardev=True, chardev_dir=str(pki), chardev_verify=False)
    argv = argv_of(caps, xml, tmp_path, tls=tls)
    chardevs = {c.split(",")[1]: c for c in opts(argv, "-chardev")}
    assert chardevs["id=charserial0"] == (
        f"socket,id=charserial0,host=127.0.0.1,port={port},"
        "tls-creds=objcharserial0_tls0,server=on,wait=off"
    )
    assert "tls-creds=objcharchannel0_tls0" in chardevs["id=charchannel0"]
    assert "tls-creds" not in chardevs["id=charchannel1"]
    assert objects(argv) == {
        "objcharserial0_tls0": creds("objcharserial0_tls0", pki, "server", False),
        "objcharchannel0_tls0": creds("objcharchannel0_tls0", pki, "client", True),
    }
    # Without chardev_tls, only tls='yes' speaks it.
    argv = argv_of(caps, xml, tmp_path, tls=TlsConfig(chardev_dir=str(pki)))
    assert set(objects(argv)) == {"objcharserial0_tls0"}


def test_chardev_tls_round_trips() -> None:
    xml = dom(
        "<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555' tls='yes'/>"
        "<protocol type='raw'/><target port='0'/></serial>"
    )
    out = parse_domain_xml(xml).to_xml()
    assert "<source mode='bind' host='127.0.0.1' service='4555' tls='yes'/>" in out
    assert parse_domain_xml(out).to_xml() == out


# -- the check at start ---------------------------------------------------------------------------


def _prepared(caps: Caps, xml: str) -> Any:
    from asvirt.drivers.qemu.postparse import prepare_domain

    return prepare_domain(parse_domain_xml(xml), caps, nvram_dir="/nonexistent")


def test_missing_or_unreadable_certificate_files_are_named(
    caps: Caps, tmp_path: Path, pki: Path
) -> None:
    vnc = _prepared(caps, dom("<graphics type='vnc' port='-1' autoport='yes'/>"))
    check_tls_files(vnc, TlsConfig())  # no TLS: nothing needed
    check_tls_files(vnc, TlsConfig(vnc=True, vnc_dir=str(pki)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OperationFailedError, match=f"'{empty}/ca-cert.pem' of the VNC display"):
        check_tls_files(vnc, TlsConfig(vnc=True, vnc_dir=str(empty)))
    half = tmp_path / "half"
    half.mkdir()
    for name in ("ca-cert.pem", "server-cert.pem", "client-cert.pem"):
        os.symlink(pki / name, half / name)
    (half / "server-key.pem").mkdir()
    with pytest.raises(OperationFailedError, match=r"server-key\.pem' .*not a regular file"):
        check_tls_files(vnc, TlsConfig(vnc=True, vnc_dir=str(half)))
    # A client's own certificate is optional, but not half of it.
    nbd = _prepared(caps, net_disk(NET_DISK_SOURCES["nbd-tls"]))
    with pytest.raises(OperationFailedError, match=r"client-key\.pem' of NBD disk 'vdb'"):
        check_tls_files(nbd, TlsConfig(nbd_dir=str(half)))
    (half / "client-cert.pem").unlink()
    check_tls_files(nbd, TlsConfig(nbd_dir=str(half)))


def test_chardev_tls_covers_egd_rngs_and_smartcards(caps: Caps, tmp_path: Path, pki: Path) -> None:
    xml = dom(
        "<rng model='virtio'><backend model='egd' type='tcp'>"
        "<source mode='connect' host='127.0.0.1' service='1234'/><protocol type='raw'/>"
        "</backend></rng>"
        "<smartcard mode='passthrough' type='tcp'>"
        "<source mode='bind' host='127.0.0.1' service='2001'/><protocol type='raw'/></smartcard>"
    )
    assert not objects(argv_of(caps, xml, tmp_path, tls=TlsConfig(chardev_dir=str(pki))))
    argv = argv_of(caps, xml, tmp_path, tls=TlsConfig(chardev=True, chardev_dir=str(pki)))
    chardevs = {c.split(",")[1]: c for c in opts(argv, "-chardev")}
    assert "tls-creds=objcharrng0_tls0" in chardevs["id=charrng0"]
    assert chardevs["id=charsmartcard0"].endswith(
        "tls-creds=objcharsmartcard0_tls0,server=on,wait=off"
    )
    assert objects(argv) == {
        "objcharrng0_tls0": creds("objcharrng0_tls0", pki, "client", True),
        "objcharsmartcard0_tls0": creds("objcharsmartcard0_tls0", pki, "server", True),
    }
    empty = tmp_path / "empty"
    empty.mkdir()
    defn = _prepared(caps, xml)
    with pytest.raises(OperationFailedError, match=r"ca-cert\.pem' of rng 'rng0' \(TCP\)"):
        check_tls_files(defn, TlsConfig(chardev=True, chardev_dir=str(empty)))


# -- encrypted keys: their passwords from the secret driver ---------------------------------------

KEY_SECRET = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
OTHER_SECRET = "5a1a6d0e-9a4b-4c56-8d3e-7d4c1f0a2b3c"


def test_secret_uuids_follow_the_default_as_libvirt() -> None:
    tls = TlsConfig.from_qemu(QemuConfig(default_tls_x509_secret_uuid=KEY_SECRET.upper()))
    assert (tls.vnc_secret, tls.nbd_secret, tls.chardev_secret) == (KEY_SECRET,) * 3
    # An area with its own directory has its own keys: the default's password is not theirs.
    cfg = QemuConfig(
        default_tls_x509_secret_uuid=KEY_SECRET,
        vnc_tls_x509_cert_dir="/pki/vnc",
        chardev_tls_x509_secret_uuid=OTHER_SECRET,
    )
    tls = TlsConfig.from_qemu(cfg)
    assert (tls.vnc_secret, tls.nbd_secret, tls.chardev_secret) == (
        None,
        KEY_SECRET,
        OTHER_SECRET,
    )
    assert TlsConfig.from_qemu(QemuConfig()).vnc_secret is None
    with pytest.raises(InvalidArgError, match="nbd_tls_x509_secret_uuid 'nope': not a UUID"):
        QemuConfig(nbd_tls_x509_secret_uuid="nope")


def test_every_credentials_object_names_the_secret_of_its_key_password(
    caps: Caps, tmp_path: Path
) -> None:
    from asvirt.drivers.base import SecretUsageType
    from asvirt.drivers.qemu.secrets import needed_secrets
    from asvirt.drivers.qemu.tls import endpoints

    xml = dom(
        "<graphics type='vnc' port='5905' listen='127.0.0.1'/>"
        "<serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/>"
        "<target port='0'/></serial><console type='tcp'>"
        "<source mode='bind' host='127.0.0.1' service='4555'/><target type='serial'/></console>"
        "<channel type='tcp'><source mode='connect' host='127.0.0.1' service='9'/>"
        "<target type='virtio' name='org.asvirt.c'/></channel>"
        "<redirdev bus='usb' type='tcp'><source mode='connect' host='127.0.0.1' service='7'/>"
        "</redirdev>"
        "<rng model='virtio'><backend model='egd' type='tcp'>"
        "<source mode='connect' host='127.0.0.1' service='1234'/></backend></rng>"
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        "<source protocol='nbd' name='e'><host name='127.0.0.1'/></source>"
        "<target dev='vdb' bus='virtio'/></disk>"
        "<controller type='usb' model='qemu-xhci'/>"
    )
    tls = TlsConfig(
        vnc=True, nbd=True, chardev=True, vnc_secret=KEY_SECRET, nbd_secret=KEY_SECRET,
        chardev_secret=OTHER_SECRET,
    )  # fmt: skip
    argv = argv_of(caps, xml, tmp_path, tls=tls)
    passwords = {i: o["passwordid"] for i, o in objects(argv).items()}
    assert passwords == {
        "vnc-tls-creds0": "vnc-tls-creds0-secret0",
        "objcharserial0_tls0": "charserial0-secret0",
        "objcharchannel0_tls0": "charchannel0-secret0",
        "objcharredir0_tls0": "charredir0-secret0",
        "objcharrng0_tls0": "charrng0-secret0",
        "objlibvirt-1-storage_tls0": "objlibvirt-1-storage_tls0-secret0",
    }
    # Each secret object comes before the credentials naming it, and reads a pipe.
    for creds_id, sid in passwords.items():
        [secret] = [o for o in opts(argv, "-object") if f'"id":"{sid}"' in o]
        assert json.loads(secret) == {
            "qom-type": "secret", "id": sid, "format": "raw", "file": "/proc/self/fd/N",
        }  # fmt: skip
        [cred] = [o for o in opts(argv, "-object") if f'"id":"{creds_id}"' in o]
        assert argv.index(secret) < argv.index(cred)
    # What a start looks up and hands over is exactly what the command line names.
    defn = _prepared(caps, xml)
    assert {e.password_id for e in endpoints(defn, tls)} == set(passwords.values())
    asked = []

    def lookup(uuid: str | None, kind: SecretUsageType, usage: str | None) -> tuple[str, bytes]:
        asked.append((uuid, kind))
        return str(uuid), f"pw-of-{uuid}".encode()

    values = needed_secrets(defn, lookup, tls)
    assert set(values) == set(passwords.values())
    assert values["charrng0-secret0"] == f"pw-of-{OTHER_SECRET}".encode()
    assert values["vnc-tls-creds0-secret0"] == f"pw-of-{KEY_SECRET}".encode()
    assert {kind for _, kind in asked} == {SecretUsageType.TLS}
    # Without secrets, no password is named.
    argv = argv_of(caps, xml, tmp_path, tls=TlsConfig(vnc=True, nbd=True, chardev=True))
    assert not any("passwordid" in o for o in objects(argv).values())
    assert needed_secrets(defn, lookup, TlsConfig(vnc=True, nbd=True, chardev=True)) == {}


def test_a_missing_key_password_names_the_secret_and_the_setting(caps: Caps) -> None:
    from asvirt.drivers.base import SecretUsageType
    from asvirt.drivers.qemu.secrets import needed_secrets
    from asvirt.errors import NoSecretError

    def lookup(uuid: str | None, kind: SecretUsageType, usage: str | None) -> tuple[str, bytes]:
        raise NoSecretError(f"no secret with matching uuid '{uuid}'")

    defn = _prepared(caps, dom("<graphics type='vnc' port='5905'/>"))
    with pytest.raises(NoSecretError) as info:
        needed_secrets(defn, lookup, TlsConfig(vnc=True, vnc_secret=KEY_SECRET))
    assert str(info.value) == (
        f"no secret with matching uuid '{KEY_SECRET}': the password of the TLS key of the VNC "
        "display (vnc_tls) of domain 'vm1' ([qemu] vnc_tls_x509_secret_uuid, else "
        "default_tls_x509_secret_uuid)"
    )
