"""Configuration: the shipped file states the defaults; bad files are refused clearly."""

from __future__ import annotations

import os

import pytest

import asvirt
from asvirt.config import Config, DaemonConfig, QemuConfig
from asvirt.drivers.qemu.security import resolve_identity

from .guest import REPO
from .helpers import embed_uri


def test_shipped_file_states_the_defaults():
    assert Config.load(REPO / "config" / "asvirt.toml") == Config()


def test_shipped_daemon_file_states_the_defaults():
    assert DaemonConfig.load(REPO / "config" / "asvirtd.toml") == DaemonConfig()


@pytest.mark.parametrize(
    "text,match",
    [
        ("[qemu]\nqmp_timeot = 3\n", "unknown key 'qmp_timeot'"),
        ("[qemuu]\n", "unknown section"),
        ("[qemu]\nqmp_timeout = 'soon'\n", "must be a float"),
        ("[qemu]\nqmp_timeout = -1\n", "positive"),
        ("[qemu\n", "asvirt.toml"),
        ("[qemu]\nuser = 0\n", "user must be a str"),
        ("[qemu]\nuser = '+qemu'\n", r"\[qemu\] user '\+qemu': '\+' must be followed by a number"),
        ("[qemu]\ngroup = '+4294967295'\n", r"group '\+4294967295': '\+' must be followed"),
        ("[qemu]\ngroup = 'kvm users'\n", "group 'kvm users': not a user or group name"),
        ("[secret]\nsecrets_encryption_key = 'key'\n", "secrets_encryption_key 'key': not an"),
        ("[secret]\nencrypt_data = 1\n", r"\[secret\] encrypt_data must be a bool"),
        ("[qemu]\nvnc_password = '123456789'\n", "vnc_password is 9 characters long, only 8"),
    ],
)
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "asvirt.toml"
    path.write_text(text)
    with pytest.raises(asvirt.InvalidArgError, match=match):
        Config.load(path)


@pytest.mark.parametrize(
    "text,match",
    [
        ("[daemon]\nbusy_poll_us = -1\n", r"\[daemon\] busy_poll_us must not be negative"),
        ("[daemon]\nmax_workers = 0\n", r"\[daemon\] max_workers must be positive"),
        ("[daemon]\nbusy_poll_us = 0.5\n", "busy_poll_us must be an int"),
    ],
)
def test_bad_daemon_config_files(tmp_path, text, match):
    path = tmp_path / "asvirtd.toml"
    path.write_text(text)
    with pytest.raises(asvirt.InvalidArgError, match=match):
        DaemonConfig.load(path)


def test_a_file_holding_a_display_password_must_be_private(tmp_path):
    path = tmp_path / "asvirt.toml"
    path.write_text("[qemu]\nspice_password = 'sp1ce'\nvnc_password = 'vnc'\n")
    os.chmod(path, 0o640)
    with pytest.raises(asvirt.InvalidArgError, match=r"mode 0640\); make it 0600") as info:
        Config.load(path)
    assert "sp1ce" not in str(info.value)
    os.chmod(path, 0o600)
    qemu = Config.load(path).qemu
    assert (qemu.vnc_password, qemu.spice_password) == ("vnc", "sp1ce")
    assert "sp1ce" not in repr(qemu)  # a log line printing the configuration


def test_busy_polling_of_the_daemon_may_be_turned_off(tmp_path):
    path = tmp_path / "asvirtd.toml"
    path.write_text("[daemon]\nbusy_poll_us = 0\n")
    assert DaemonConfig.load(path).daemon.busy_poll_us == 0


def test_integers_are_accepted_for_seconds(tmp_path):
    path = tmp_path / "asvirt.toml"
    path.write_text("[qemu]\nqmp_timeout = 5\n")
    assert Config.load(path).qemu.qmp_timeout == 5.0


@pytest.mark.parametrize(
    ("user", "group", "match"),
    [
        ("asvirt-no-such-user", "", "user 'asvirt-no-such-user': no such user"),
        ("nobody", "asvirt-no-such-group", "group 'asvirt-no-such-group': no such group"),
        ("+54321", "", "user '\\+54321' has no entry in the user database"),
    ],
)
async def test_qemu_user_and_group_the_system_does_not_know_are_refused_at_open(
    tmp_path, user, group, match
):
    if os.geteuid() != 0:
        pytest.skip("[qemu] user is only looked up by a supervisor running as root")
    config = Config(qemu=QemuConfig(user=user, group=group))
    with pytest.raises(asvirt.InvalidArgError, match=match):
        async with asvirt.open(embed_uri(tmp_path / "root"), config=config):
            pass
    assert not (tmp_path / "root").exists()


async def test_numeric_ids_need_no_user_database(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("[qemu] user is only looked up by a supervisor running as root")
    config = QemuConfig(user="+54321", group="+54320")
    identity = resolve_identity(config)
    assert identity is not None
    assert (identity.uid, identity.gid, identity.groups) == (54321, 54320, (54320,))
    async with asvirt.open(embed_uri(tmp_path / "root"), config=Config(qemu=config)) as conn:
        assert await conn.list_all_domains() == []
