"""Domain XML elements found missing by running more of libvirt's own cases through asvirt.

Each test writes its own small XML: what is parsed comes back in dumpxml, and what cannot
be honoured is refused with a message naming it.
"""

from __future__ import annotations

import pytest
from lxml import etree

from asvirt.conf.domain import parse_domain_xml
from asvirt.errors import ConfigUnsupportedError
from tests.caps import CONFORMANCE
from tests.helpers import dom

SCHEMA = CONFORMANCE / "schemas" / "domain.rng"


def _valid(xml: str) -> None:
    if not SCHEMA.exists():
        return
    rng = etree.RelaxNG(file=str(SCHEMA))
    assert rng.validate(etree.fromstring(xml.encode())), rng.error_log


def test_shareable_disk_round_trips() -> None:
    xml = dom("<disk type='file'><source file='/a.img'/><target dev='vda'/><shareable/></disk>")
    d = parse_domain_xml(xml)
    assert d.disks[0].shareable
    out = d.to_xml()
    assert "<shareable/>" in out
    _valid(out)
    assert parse_domain_xml(out).to_xml() == out
    assert (
        not parse_domain_xml(dom("<disk><source file='/a'/><target dev='vda'/></disk>"))
        .disks[0]
        .shareable
    )


def test_shareable_takes_no_attributes() -> None:
    with pytest.raises(ConfigUnsupportedError, match="shareable"):
        parse_domain_xml(
            dom("<disk><source file='/a'/><target dev='vda'/><shareable x='1'/></disk>")
        )


def test_scsi_controller_driver_round_trips() -> None:
    xml = dom(
        "<controller type='scsi' index='0' model='virtio-scsi'>"
        "<driver queues='4' cmd_per_lun='8' max_sectors='256' ioeventfd='off'/></controller>"
    )
    d = parse_domain_xml(xml)
    (ctl,) = [c for c in d.controllers if c.type == "scsi"]
    assert (ctl.queues, ctl.cmd_per_lun, ctl.max_sectors, ctl.ioeventfd) == (4, 8, 256, "off")
    out = d.to_xml()
    _valid(out)
    assert parse_domain_xml(out).to_xml() == out


@pytest.mark.parametrize(
    "driver, named",
    [
        ("<driver iothread='one'/>", "iothread"),
        ("<driver queues='zero'/>", "queues"),
    ],
)
def test_scsi_controller_driver_refusals_name_the_attribute(driver: str, named: str) -> None:
    with pytest.raises(Exception, match=named):
        parse_domain_xml(dom(f"<controller type='scsi' model='virtio-scsi'>{driver}</controller>"))


def test_driver_on_other_controllers_is_refused() -> None:
    with pytest.raises(ConfigUnsupportedError, match="<driver>"):
        parse_domain_xml(dom("<controller type='usb' index='0'><driver queues='2'/></controller>"))
