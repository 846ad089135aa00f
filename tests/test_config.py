"""Configuration: the shipped file states the defaults; bad files are refused clearly."""

from __future__ import annotations

import pytest

import asvirt
from asvirt.config import Config, DaemonConfig

from .guest import REPO


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
    ],
)
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "asvirt.toml"
    path.write_text(text)
    with pytest.raises(asvirt.InvalidArgError, match=match):
        Config.load(path)


def test_integers_are_accepted_for_seconds(tmp_path):
    path = tmp_path / "asvirt.toml"
    path.write_text("[qemu]\nqmp_timeout = 5\n")
    assert Config.load(path).qemu.qmp_timeout == 5.0
