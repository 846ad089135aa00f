"""Hypothesis strategies for valid libvirt domain XML (test helper).

Shared by the parser property tests and the test that starts random domains under QEMU.
"""

from __future__ import annotations

import string
from xml.sax.saxutils import quoteattr

from hypothesis import strategies as st

NAME_CHARS = string.ascii_letters + string.digits + "-_.+ "
names = st.text(NAME_CHARS, min_size=1, max_size=40).filter(
    lambda n: n not in (".", "..") and not n.startswith("-") and n.strip() == n
)
units = st.sampled_from(["KiB", "k", "MiB", "M", "m", "GiB", "MB", "bytes", "b"])
free_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x7f"), max_size=30
)


def disk_name(prefix: str, n: int) -> str:
    letters = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(97 + rem) + letters
    return prefix + letters


@st.composite
def memory(draw: st.DrawFn) -> str:
    unit = draw(units)
    scale = {"KiB": 1, "k": 1, "MiB": 1024, "M": 1024, "m": 1024, "GiB": 1 << 20}
    scale |= {"MB": 1000, "bytes": 1 / 1024, "b": 1 / 1024}
    kib = draw(st.integers(16 * 1024, 2 << 20))
    value = max(1, int(kib / scale[unit]))
    return f"<memory unit='{unit}'>{value}</memory>"


@st.composite
def disks(draw: st.DrawFn, q35: bool) -> str:
    out = []
    buses = ["virtio", "sata", "scsi", "usb", "fdc"] + ([] if q35 else ["ide"])
    used: dict[str, int] = {}
    for _ in range(draw(st.integers(0, 4))):
        bus = draw(st.sampled_from(buses))
        prefix = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd", "usb": "sd"}.get(
            bus, "fd"
        )
        n = used.get(prefix, 0)
        if (bus == "ide" and n > 3) or (bus == "fdc" and n > 1):
            continue
        used[prefix] = n + 1
        if bus == "fdc":  # a floppy drive, maybe empty
            source = f"<source file='/images/d{len(out)}.img'/>" if draw(st.booleans()) else ""
            out.append(
                f"<disk type='file' device='floppy'><driver name='qemu' type='raw'/>{source}"
                f"<target dev='{disk_name(prefix, n)}' bus='fdc'/></disk>"
            )
            continue
        cdrom = bus not in ("virtio", "usb") and draw(st.booleans())
        if bus == "usb" and draw(st.booleans()):
            bus += f"' removable='{draw(st.sampled_from(['on', 'off']))}"
        fmt = draw(st.sampled_from(["raw", "qcow2"]))
        cache = draw(st.sampled_from([None, "none", "writeback", "unsafe", "default"]))
        driver = f"<driver name='qemu' type='{fmt}'" + (f" cache='{cache}'" if cache else "")
        if bus == "virtio" and draw(st.booleans()):
            size = draw(st.sampled_from([128, 256]))
            driver += f" queues='{draw(st.integers(1, 4))}' queue_size='{size}'"
        driver += "/>"
        source = (
            f"<source file='/images/d{len(out)}.img'/>" if not cdrom or draw(st.booleans()) else ""
        )
        kind = "file"
        if source and draw(st.integers(0, 3)) == 0:
            # Curl media are read-only, and QEMU has no read-only IDE/SATA hard disk.
            curl_ok = cdrom or bus not in ("ide", "sata")
            kind, source = "network", draw(network_source(curl_ok))
        if kind == "file" and source and draw(st.integers(0, 3)) == 0:
            # Its file left as it is, whoever QEMU runs as.
            source = source.replace("/>", "><seclabel model='dac' relabel='no'/></source>")
        # QEMU's curl driver only reads.
        readonly = cdrom or any(f"protocol='{p}" in source for p in ("http", "ftp"))
        extra = "<readonly/>" if readonly else ""
        if bus in ("virtio", "scsi") and not cdrom and draw(st.booleans()):
            extra += "<serial>SN" + str(len(out)) + "</serial>"
        device = "cdrom" if cdrom else "disk"
        if source and draw(st.booleans()):
            extra += draw(disk_tuning(bus, cdrom))
        out.append(
            f"<disk type='{kind}' device='{device}'>{driver}{source}"
            f"<target dev='{disk_name(prefix, n)}' bus='{bus}'/>{extra}</disk>"
        )
    return "".join(out)


net_hosts = st.sampled_from(["127.0.0.1", "example.org", "::1", "mon-1.example.org"])


@st.composite
def network_source(draw: st.DrawFn, curl_ok: bool = True) -> str:
    """The ``<source protocol=...>`` of a network disk, of every protocol asvirt honours
    (``curl_ok``: http(s)/ftp(s) too, which are read-only)."""
    curl = ["http", "https", "ftp", "ftps"] if curl_ok else []
    protocol = draw(st.sampled_from(["nbd", "iscsi", "rbd", "gluster", "ssh", "nfs", *curl]))

    def host(unix_ok: bool = False, port_ok: bool = True) -> str:
        if unix_ok and draw(st.booleans()):
            return f"<host transport='unix' socket='/images/{protocol}.sock'/>"
        port = draw(st.none() | st.integers(1, 65535)) if port_ok else None
        return f"<host name='{draw(net_hosts)}'" + (f" port='{port}'" if port else "") + "/>"

    word = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12).filter(
        lambda w: w not in (".", "..")
    )
    name, inner = draw(word), ""
    if protocol == "nbd":
        inner = host(unix_ok=True)
        attrs = f" name={quoteattr(name)}" if draw(st.booleans()) else ""
        tls = draw(st.sampled_from(["", " tls='yes'", " tls='no'"]))
        attrs += tls + (" tlsHostname='nbd.example.org'" if draw(st.booleans()) else "")
    elif protocol in ("http", "https", "ftp", "ftps"):
        attrs = f" name='/{name}.iso'"
        if protocol.startswith("http") and draw(st.booleans()):
            attrs += " query='a=1'"
        inner = host()
        if protocol in ("https", "ftps") and draw(st.booleans()):
            inner += f"<ssl verify='{draw(st.sampled_from(['yes', 'no']))}'/>"
        if draw(st.booleans()):
            inner += f"<readahead size='{draw(st.integers(1, 1 << 20))}'/>"
        if draw(st.booleans()):
            inner += f"<timeout seconds='{draw(st.integers(1, 600))}'/>"
        if protocol.startswith("http") and draw(st.booleans()):
            names = draw(st.lists(word, min_size=1, max_size=3, unique=True))
            jar = ""
            for cookie in names:
                quote = draw(st.sampled_from(["", '"']))  # a value may be quoted
                jar += f"<cookie name='{cookie}'>{quote}{draw(word)}{quote}</cookie>"
            inner += f"<cookies>{jar}</cookies>"
    elif protocol == "iscsi":
        attrs = f" name='iqn.2013-07.com.example:{name}/{draw(st.integers(0, 255))}'"
        inner = host()
    elif protocol == "rbd":
        attrs = f" name='{name}/{draw(word)}'"
        inner = "".join(host() for _ in range(draw(st.integers(0, 3))))
        if draw(st.booleans()):  # libvirt's genericName: no '.'
            snap = draw(st.text(string.ascii_letters + string.digits + "_+-", min_size=1))
            inner += f"<snapshot name={quoteattr(snap)}/>"
    elif protocol == "gluster":
        attrs = f" name='{name}/{draw(word)}.img'"
        inner = "".join(host(unix_ok=True) for _ in range(draw(st.integers(1, 3))))
    elif protocol == "ssh":
        attrs, inner = f" name='/{name}.img'", host()
    else:  # nfs: QEMU's driver takes no port
        attrs, inner = f" name='/{name}.img'", host(port_ok=False)
    # A LUKS image on the server, opened with a secret (libvirt's schema has no <encryption>
    # in an nfs source).
    if protocol != "nfs" and draw(st.integers(0, 4)) == 0:
        inner += "<encryption format='luks'><secret type='passphrase' usage='net'/></encryption>"
    return f"<source protocol='{protocol}'{attrs}>{inner}</source>"


@st.composite
def disk_tuning(draw: st.DrawFn, bus: str, cdrom: bool) -> str:
    """A disk's <iotune>, <blockio> and <geometry> (asvirt.conf.tuning)."""
    out = ""
    if draw(st.booleans()):
        limits = ""
        for what in ("bytes", "iops"):
            kind = draw(st.sampled_from([None, "total", "read", "write"]))
            if kind is None:
                continue
            base = draw(st.integers(1, 1 << 30))
            limits += f"<{kind}_{what}_sec>{base}</{kind}_{what}_sec>"
            if draw(st.booleans()):
                limits += f"<{kind}_{what}_sec_max>{base * 2}</{kind}_{what}_sec_max>"
                if draw(st.booleans()):
                    limits += (
                        f"<{kind}_{what}_sec_max_length>{draw(st.integers(1, 60))}"
                        f"</{kind}_{what}_sec_max_length>"
                    )
                if what == "iops" and draw(st.booleans()):
                    limits += f"<size_iops_sec>{draw(st.sampled_from([512, 4096]))}</size_iops_sec>"
        if limits and draw(st.booleans()):
            limits += f"<group_name>{draw(st.sampled_from(['g1', 'g2']))}</group_name>"
        out += f"<iotune>{limits}</iotune>" if limits else ""
    if not cdrom and draw(st.booleans()):
        lbs = 512 if bus in ("ide", "sata") else draw(st.sampled_from([512, 4096]))
        pbs = draw(st.sampled_from([lbs, 4096]))
        out += f"<blockio logical_block_size='{lbs}' physical_block_size='{pbs}'/>"
    # usb-storage and floppies have no CHS geometry in QEMU (refused at define).
    if not cdrom and bus.split("'")[0] not in ("usb", "fdc") and draw(st.booleans()):
        trans = draw(st.sampled_from(["", " trans='lba'", " trans='none'"]))
        if bus not in ("ide", "sata"):
            trans = ""
        out += (
            f"<geometry cyls='{draw(st.integers(1, 16383))}' heads='{draw(st.integers(1, 16))}' "
            f"secs='{draw(st.integers(1, 63))}'{trans}/>"
        )
    return out


@st.composite
def schedparam(draw: st.DrawFn) -> str:
    """libvirt's schedparam: batch/idle, or fifo/rr with a priority Linux has (1-99)."""
    policy = draw(st.sampled_from(["batch", "idle", "fifo", "rr"]))
    if policy in ("fifo", "rr"):
        return f"scheduler='{policy}' priority='{draw(st.integers(1, 99))}'"
    return f"scheduler='{policy}'"


def _cpuset_of(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


@st.composite
def thread_scheds(draw: st.DrawFn, tag: str, attr: str, ids: list[int]) -> str:
    """<vcpusched>/<iothreadsched> over disjoint sets of the thread ids."""
    out = ""
    left = list(ids)
    for _ in range(draw(st.integers(0, 2))):
        if not left:
            break
        chosen = draw(st.lists(st.sampled_from(left), min_size=1, max_size=3, unique=True))
        left = [i for i in left if i not in chosen]
        out += f"<{tag} {attr}='{_cpuset_of(sorted(chosen))}' {draw(schedparam())}/>"
    return out


@st.composite
def resctrl(draw: st.DrawFn, maxcpu: int) -> str:
    """<cachetune>/<memorytune> over disjoint vCPU sets (a memorytune may share a
    cachetune's set exactly), with caches that do not collide and monitors within."""
    out_cache = out_mem = ""
    left = list(range(maxcpu))
    for _ in range(draw(st.integers(0, 2))):
        if not left:
            break
        vcpus = sorted(draw(st.lists(st.sampled_from(left), min_size=1, max_size=2, unique=True)))
        left = [i for i in left if i not in vcpus]
        cs = _cpuset_of(vcpus)
        monitor = draw(st.booleans())
        if draw(st.booleans()):
            caches = ""
            for cache_id in draw(st.lists(st.integers(0, 1), max_size=2, unique=True)):
                size = draw(st.sampled_from(["768' unit='KiB", "3' unit='MiB", "1048576"]))
                kinds = draw(st.sampled_from([["both"], ["code", "data"], ["data"]]))
                for kind in kinds:
                    caches += f"<cache id='{cache_id}' level='3' type='{kind}' size='{size}'/>"
            if caches or monitor:
                mon = f"<monitor level='3' vcpus='{cs}'/>" if monitor else ""
                out_cache += f"<cachetune vcpus='{cs}'>{caches}{mon}</cachetune>"
        if draw(st.booleans()):
            nodes = "".join(
                f"<node id='{n}' bandwidth='{draw(st.integers(0, 100))}'/>"
                for n in draw(st.lists(st.integers(0, 1), min_size=1, max_size=2, unique=True))
            )
            mon = f"<monitor vcpus='{cs}'/>" if monitor else ""
            out_mem += f"<memorytune vcpus='{cs}'>{nodes}{mon}</memorytune>"
    return out_cache + out_mem


@st.composite
def tuning(draw: st.DrawFn, maxcpu: int, iothreads: int) -> str:
    """<cputune>, <memtune>, <blkiotune> (asvirt.conf.tuning), as libvirt's schema has them."""
    out = ""
    cpuset = st.sampled_from(["0", "0-1", "1", "0,1"])
    if draw(st.booleans()):
        ct = ""
        for name, (lo, hi) in (("shares", (2, 10000)), ("period", (1000, 1000000))):
            if draw(st.booleans()):
                ct += f"<{name}>{draw(st.integers(lo, hi))}</{name}>"
        if draw(st.booleans()):
            ct += f"<quota>{draw(st.sampled_from([-1, 1000, 50000]))}</quota>"
        if draw(st.booleans()):
            ct += "<global_period>100000</global_period><global_quota>200000</global_quota>"
        for vcpu in draw(st.lists(st.integers(0, maxcpu - 1), unique=True, max_size=3)):
            ct += f"<vcpupin vcpu='{vcpu}' cpuset='{draw(cpuset)}'/>"
        if draw(st.booleans()):
            ct += f"<emulatorpin cpuset='{draw(cpuset)}'/>"
        for tid in draw(st.lists(st.integers(1, iothreads), unique=True)) if iothreads else []:
            ct += f"<iothreadpin iothread='{tid}' cpuset='{draw(cpuset)}'/>"
        if draw(st.booleans()):
            ct += f"<emulatorsched {draw(schedparam())}/>"
        ct += draw(thread_scheds("vcpusched", "vcpus", list(range(maxcpu))))
        ct += draw(thread_scheds("iothreadsched", "iothreads", list(range(1, iothreads + 1))))
        ct += draw(resctrl(maxcpu))
        out += f"<cputune>{ct}</cputune>"
    if draw(st.booleans()):
        hard = draw(st.integers(1 << 20, 8 << 20))
        mt = f"<hard_limit unit='KiB'>{hard}</hard_limit>" if draw(st.booleans()) else ""
        if draw(st.booleans()):
            mt += f"<soft_limit unit='KiB'>{hard // 2}</soft_limit>"
        if draw(st.booleans()):
            mt += f"<swap_hard_limit unit='KiB'>{hard * 2}</swap_hard_limit>"
        out += f"<memtune>{mt}</memtune>"
    if draw(st.booleans()):
        bt = f"<weight>{draw(st.integers(100, 1000))}</weight>" if draw(st.booleans()) else ""
        if draw(st.booleans()):
            bt += (
                f"<device><path>/dev/sda</path><weight>{draw(st.integers(100, 1000))}</weight>"
                f"<read_bytes_sec>{draw(st.integers(0, 1 << 30))}</read_bytes_sec></device>"
            )
        out += f"<blkiotune>{bt}</blkiotune>"
    return out


SECLABELS = (
    "",
    "<seclabel type='none' model='dac'/>",
    "<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>",
    "<seclabel type='dynamic' model='dac' relabel='yes'/>",
)


@st.composite
def devices(draw: st.DrawFn, q35: bool) -> str:
    parts = [draw(disks(q35))]
    for i in range(draw(st.integers(0, 2))):
        model = draw(st.sampled_from(["virtio", "e1000", "rtl8139", None]))
        mac = f"<mac address='52:54:00:00:00:{i:02x}'/>" if draw(st.booleans()) else ""
        model_el = f"<model type='{model}'/>" if model else ""
        if model == "virtio" and draw(st.booleans()):
            model_el += draw(nic_driver(q35, qemu_transmits=True))
        # One NIC at most hides its ROM: QEMU cannot hide two of one model's (asvirt says so).
        roms = ["", "<rom enabled='no'/>", "<rom bar='on'/>", *(["<rom bar='off'/>"] * (i == 0))]
        model_el += draw(st.sampled_from(roms))
        if draw(st.booleans()):
            model_el += f"<acpi index='{i + 1}'/>"
        parts.append(f"<interface type='user'>{mac}{model_el}</interface>")
    serial_type = draw(st.sampled_from([None, "pty", "file", "null", "vc"]))
    if serial_type == "file":
        parts.append("<serial type='file'><source path='/tmp/serial.log'/></serial>")
    elif serial_type:
        parts.append(f"<serial type='{serial_type}'><target port='0'/></serial>")
    if draw(st.booleans()):
        parts.append("<console type='pty'><target type='virtio'/></console>")
    if draw(st.booleans()):
        parts.append(
            "<channel type='unix'><source mode='bind' path='/tmp/qga.sock'/>"
            "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        )
    for kind in draw(st.lists(st.sampled_from(["mouse", "keyboard", "tablet"]), max_size=3)):
        bus = draw(st.sampled_from(["usb", "virtio"]))
        parts.append(f"<input type='{kind}' bus='{bus}'/>")
    if draw(st.booleans()):
        parts.append("<graphics type='vnc' port='-1'/>")
        models = ["vga", "cirrus", "virtio", "qxl", "bochs", "vmvga", "ramfb", None]
        video = draw(st.sampled_from(models))
        if video:
            extra, driver = "", ""
            if video in ("vga", "virtio", "qxl", "bochs") and draw(st.booleans()):
                extra = f"<resolution x='{draw(st.integers(640, 1920))}' y='768'/>"
            if video == "virtio" and draw(st.booleans()):
                names = st.sampled_from(["ats", "packed", "page_per_vq"])
                switches = draw(st.lists(names, unique=True))
                driver = "<driver name='qemu'" + "".join(f" {k}='on'" for k in switches) + "/>"
            parts.append(f"<video>{driver}<model type='{video}'>{extra}</model></video>")
    parts.append(
        draw(st.sampled_from(["", "<memballoon model='none'/>", "<memballoon model='virtio'/>"]))
    )
    if draw(st.booleans()):
        parts.append("<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>")
    parts.append(draw(virt_install_devices(q35)))
    parts.append(draw(rare_devices(q35)))
    parts.append(draw(last_devices()))
    parts.append(draw(host_backed_devices(q35)))
    if draw(st.booleans()):
        model = "itco" if q35 else draw(st.sampled_from(["ib700", "i6300esb"]))
        parts.append(f"<watchdog model='{model}' action='reset'/>")
    return "".join(parts)


_ON_OFF = st.sampled_from(["on", "off"])


@st.composite
def nic_driver(draw: st.DrawFn, q35: bool, qemu_transmits: bool, queues: int = 0) -> str:
    """A virtio NIC's <driver>: its switches, ring size, virtio options and offloads
    (``qemu_transmits``: QEMU moves the packets, so a txmode applies; ``queues``: > 0 for
    multiqueue). iommu='on' on Q35 only: virtio-net-pci is transitional on the PC's bus."""

    def switches(names: list[str]) -> str:
        picked = draw(st.lists(st.sampled_from(names), unique=True))
        return "".join(f" {name}='{draw(_ON_OFF)}'" for name in picked)

    attrs = ""
    if qemu_transmits and draw(st.booleans()):
        attrs += f" txmode='{draw(st.sampled_from(['iothread', 'timer']))}'"
    attrs += switches(["ioeventfd", "event_idx"])
    if queues:
        attrs += f" queues='{queues}'"
    size = draw(st.sampled_from([None, 256, 512, 1024]))
    if size:
        attrs += f" rx_queue_size='{size}'"
    attrs += switches(["rss", "rss_hash_report"])
    attrs += switches(["ats", "packed", "page_per_vq", *(["iommu"] if q35 else [])])
    host = switches(["csum", "gso", "tso4", "tso6", "ecn", "ufo", "mrg_rxbuf"])
    guest = switches(["csum", "tso4", "tso6", "ecn", "ufo"])
    inner = (f"<host{host}/>" if host else "") + (f"<guest{guest}/>" if guest else "")
    return f"<driver{attrs}>{inner}</driver>" if inner else f"<driver{attrs}/>"


@st.composite
def virt_install_devices(draw: st.DrawFn, q35: bool) -> str:
    """SPICE and its channels, USB redirection, sound cards and 9p shares (all of which a
    paused QEMU starts without helper programs)."""
    parts = []
    spice = draw(st.booleans())
    if spice:
        opts = draw(st.sampled_from(["", "<image compression='off'/>", "<mouse mode='client'/>"]))
        listen = draw(st.sampled_from(["", " listen='127.0.0.1'"]))
        parts.append(f"<graphics type='spice' autoport='yes'{listen}>{opts}</graphics>")
        parts.append("<channel type='spicevmc'><target type='virtio'/></channel>")
        redirs = draw(st.integers(0, 2))
        parts.extend("<redirdev bus='usb' type='spicevmc'/>" for _ in range(redirs))
        if redirs and draw(st.booleans()):
            klass = draw(st.sampled_from(["", " class='0x08'", " class='0x03'"]))
            parts.append(
                f"<redirfilter><usbdev{klass} vendor='0x{draw(st.integers(0, 0xFFFF)):04x}' "
                f"version='{draw(st.integers(0, 99))}.{draw(st.integers(0, 99))}' "
                "allow='yes'/><usbdev allow='no'/></redirfilter>"
            )
        if draw(st.booleans()):
            parts.append("<video><model type='qxl' heads='2'/></video>")
    models = ["ich6", "ich9", "ac97", "es1370", "usb"] + ([] if q35 else ["sb16"])
    for model in draw(st.lists(st.sampled_from(models), max_size=2, unique=True)):
        codec = ""
        if model in ("ich6", "ich9") and draw(st.booleans()):
            codec = f"<codec type='{draw(st.sampled_from(['duplex', 'micro', 'output']))}'/>"
        parts.append(f"<sound model='{model}'>{codec}</sound>")
    for i in range(draw(st.integers(0, 2))):
        mode = draw(st.sampled_from(["passthrough", "mapped", "squash"]))
        ro = "<readonly/>" if draw(st.booleans()) else ""
        parts.append(
            f"<filesystem type='mount' accessmode='{mode}'><source dir='/tmp/share'/>"
            f"<target dir='share{i}'/>{ro}</filesystem>"
        )
    return "".join(parts)


@st.composite
def rare_devices(draw: st.DrawFn, q35: bool) -> str:
    """The rest of libvirt's x86 devices: IOMMUs, vsock, ivshmem, panic models, EGD and
    transitional RNGs, TCP/UDP/pipe-less chardevs and parallel ports. Paths and names are
    placeholders the launch test points at scratch places (``/tmp/egd.sock``, ``hyp-``)."""
    parts = []
    if q35 and draw(st.booleans()):
        model = draw(st.sampled_from(["virtio", "intel"]))
        drv = ""
        if model == "intel":
            opts = draw(st.lists(st.sampled_from(["caching_mode", "iotlb"]), unique=True))
            attrs = "".join(f" {o}='{draw(st.sampled_from(['on', 'off']))}'" for o in opts)
            if draw(st.booleans()):
                attrs += f" aw_bits='{draw(st.sampled_from([39, 48]))}'"
            drv = f"<driver{attrs}/>" if attrs else ""
        parts.append(f"<iommu model='{model}'>{drv}</iommu>")
    if draw(st.booleans()):
        cid = draw(
            st.one_of(
                st.just("<cid auto='yes'/>"),
                st.integers(3, 1 << 20).map(lambda n: f"<cid auto='no' address='{n}'/>"),
            )
        )
        parts.append(f"<vsock model='virtio'>{cid}</vsock>")
    for i in range(draw(st.integers(0, 2))):
        size = draw(st.sampled_from(["", "<size unit='M'>1</size>", "<size unit='M'>8</size>"]))
        role = draw(st.sampled_from(["", " role='master'", " role='peer'"]))
        parts.append(f"<shmem name='hyp-{i}'{role}><model type='ivshmem-plain'/>{size}</shmem>")
    panic = draw(st.sampled_from([None, "isa", "pvpanic", "hyperv"]))
    if panic:
        parts.append(f"<panic model='{panic}'/>")
    if draw(st.booleans()):
        model = draw(st.sampled_from(["virtio", "virtio-transitional", "virtio-non-transitional"]))
        backend = draw(
            st.sampled_from(
                [
                    "<backend model='builtin'/>",
                    "<backend model='egd' type='unix'><source mode='bind' path='/tmp/egd.sock'/>"
                    "</backend>",
                    "<backend model='egd' type='tcp'><source mode='bind' host='127.0.0.1' "
                    "service='0'/><protocol type='raw'/></backend>",
                ]
            )
        )
        parts.append(f"<rng model='{model}'>{backend}</rng>")
    chardevs = [
        "<source mode='bind' host='127.0.0.1' service='0'/><protocol type='telnet'/>",
        "<source mode='bind' host='127.0.0.1' service='0'/><protocol type='raw'/>",
        # tls='yes' needs certificates: test_argv_tls.py and test_qemu_tls.py make them.
        "<source mode='bind' host='127.0.0.1' service='0' tls='no'/><protocol type='raw'/>",
    ]
    for i in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["tcp", "udp"]))
        if kind == "tcp":
            source = draw(st.sampled_from(chardevs))
        else:
            source = "<source mode='connect' host='127.0.0.1' service='9'/>"
        parts.append(
            f"<channel type='{kind}'>{source}<target type='virtio' name='org.hyp.{i}'/></channel>"
        )
    for _ in range(draw(st.integers(0, 2))):
        parts.append(f"<parallel type='{draw(st.sampled_from(['pty', 'null', 'vc']))}'/>")
    if draw(st.booleans()):
        parts.append(
            "<smartcard mode='passthrough' type='tcp'><source mode='bind' host='127.0.0.1' "
            "service='0'/><protocol type='raw'/></smartcard>"
        )
    return "".join(parts)


@st.composite
def host_backed_devices(draw: st.DrawFn, q35: bool) -> str:
    """NICs on host taps and macvtaps (multiqueue too), and SCSI LUNs with sgio/rawio: what a
    start makes or opens on the host (the launch test leaves them out;
    tests/test_network_host.py and tests/test_qemu_confinement.py start them)."""
    parts = []
    for i in range(draw(st.integers(0, 2))):
        model = draw(st.sampled_from(["", "<model type='virtio'/>", "<model type='e1000'/>"]))
        if "virtio" in model and draw(st.booleans()):
            # multiqueue; vhost-net demanded, refused, or the host's choice
            name = draw(st.sampled_from(["", " name='vhost'", " name='qemu'"]))
            queues = draw(st.integers(1, 8))
            if draw(st.booleans()):  # with the rest of virtio-net's settings
                drv = draw(nic_driver(q35, qemu_transmits=name == " name='qemu'", queues=queues))
                model += drv.replace("<driver", f"<driver{name}", 1)
            else:
                model += f"<driver{name} queues='{queues}'/>"
        if draw(st.booleans()):
            managed = draw(st.sampled_from(["", " managed='no'", " managed='yes'"]))
            target = f"<target dev='hyptap{i}'{managed}/>" if managed or draw(st.booleans()) else ""
            if managed != " managed='no'" and draw(st.booleans()):
                model += f"<mtu size='{draw(st.integers(68, 65535))}'/>"
            if draw(st.booleans()):
                model += f"<tune><sndbuf>{draw(st.integers(0, 1 << 20))}</sndbuf></tune>"
            parts.append(f"<interface type='ethernet'>{target}{model}</interface>")
        else:
            mode = draw(st.sampled_from(["", " mode='vepa'", " mode='bridge'", " mode='private'"]))
            parts.append(f"<interface type='direct'><source dev='eth0'{mode}/>{model}</interface>")
    if draw(st.booleans()):
        rawio = draw(st.sampled_from(["", " rawio='yes'", " rawio='no'"]))
        sgio = draw(st.sampled_from(["", " sgio='filtered'", " sgio='unfiltered'"]))
        parts.append(
            "<controller type='scsi' index='7' model='virtio-scsi'/>"
            f"<disk type='block' device='lun'{rawio}{sgio}><source dev='/dev/sg-hyp'/>"
            "<target dev='sdz' bus='scsi'/>"
            "<address type='drive' controller='7' bus='0' target='0' unit='0'/></disk>"
        )
    return "".join(parts)


@st.composite
def last_devices(draw: st.DrawFn) -> str:
    """The devices issue 12 brought last: socket NICs, guestfwd channels, virtio-crypto and
    the D-Bus display (the launch test points ``/tmp/fwd`` at a scratch place)."""
    parts = []
    base = draw(st.integers(20000, 60000))  # one port each: two listeners cannot share one
    for i in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["server", "udp"]))
        if kind == "server":
            source = f"<source address='127.0.0.1' port='{base + i}'/>"
        else:
            source = (
                "<source address='127.0.0.1' port='9'><local address='127.0.0.1' "
                f"port='{base + i}'/></source>"
            )
        model = draw(st.sampled_from(["", "<model type='virtio'/>", "<model type='e1000'/>"]))
        parts.append(f"<interface type='{kind}'>{source}{model}</interface>")
    for i in range(draw(st.integers(0, 2))):
        parts.append(
            f"<channel type='unix'><source mode='bind' path='/tmp/fwd{i}.sock'/>"
            f"<target type='guestfwd' address='10.0.2.{10 + i}' port='{4600 + i}'/></channel>"
        )
    if draw(st.booleans()):
        parts.append("<crypto model='virtio' type='qemu'><backend model='builtin'/></crypto>")
    if draw(st.booleans()):
        parts.append("<graphics type='dbus' p2p='yes'/>")
    return "".join(parts)


@st.composite
def numa_and_memory_devices(draw: st.DrawFn, maxcpu: int) -> tuple[str, str, str]:
    """(``<maxMemory>`` and ``<memory>``, ``<cpu>`` children, ``<devices>`` children): NUMA
    cells over the vCPUs, and DIMMs and virtio-mem plugged into the hotplug region."""
    ncells = draw(st.integers(1, min(2, maxcpu)))
    cells = []
    for i in range(ncells):
        cpus = ",".join(str(c) for c in range(maxcpu) if c % ncells == i)
        mib = draw(st.sampled_from([32, 64]))
        access = draw(st.sampled_from(["", " memAccess='shared'"]))
        cells.append(f"<cell id='{i}' cpus='{cpus}' memory='{mib}' unit='MiB'{access}/>")
    devs = []
    for n in range(draw(st.integers(0, 2))):
        node = f"<node>{draw(st.integers(0, ncells - 1))}</node>"
        kind = draw(st.sampled_from(["dimm", "virtio-mem", "nvdimm", "virtio-pmem"]))
        if kind == "nvdimm":
            label = "<label><size unit='KiB'>128</size></label>" if draw(st.booleans()) else ""
            devs.append(
                f"<memory model='nvdimm'><source><path>/tmp/mem{n}</path></source><target>"
                f"<size unit='MiB'>{draw(st.sampled_from([2, 4]))}</size>{node}{label}</target>"
                "</memory>"
            )
        elif kind == "virtio-pmem":
            devs.append(
                f"<memory model='virtio-pmem'><source><path>/tmp/mem{n}</path></source>"
                "<target><size unit='MiB'>2</size></target></memory>"
            )
        elif kind == "dimm":
            devs.append(
                f"<memory model='dimm'><target><size unit='MiB'>{draw(st.sampled_from([2, 64]))}"
                f"</size>{node}</target></memory>"
            )
        else:
            devs.append(
                "<memory model='virtio-mem'><target><size unit='MiB'>64</size>"
                f"{node}<block unit='KiB'>2048</block><requested unit='MiB'>"
                f"{draw(st.sampled_from([0, 2, 16]))}</requested></target></memory>"
            )
    head = "<maxMemory slots='4' unit='GiB'>1</maxMemory><memory unit='MiB'>64</memory>"
    return head, f"<numa>{''.join(cells)}</numa>", "".join(devs)


@st.composite
def windows_features(draw: st.DrawFn) -> tuple[str, str]:
    """(``<features>`` children, ``<clock>`` timers) of a Windows guest, from the Hyper-V
    enlightenments QEMU 7.2 gives any guest (VP_INDEX and what needs it ask the kernel)."""
    flags = ["relaxed", "vapic", "runtime", "reset", "frequencies", "reenlightenment", "evmcs"]
    chosen = draw(st.lists(st.sampled_from(flags), unique=True))
    hv = "".join(f"<{f} state='{draw(st.sampled_from(['on', 'off']))}'/>" for f in chosen)
    if draw(st.booleans()):
        hv += f"<spinlocks state='on' retries='{draw(st.integers(4095, 1 << 20))}'/>"
    if draw(st.booleans()):
        hv += "<vendor_id state='on' value='asvirt'/>"
    mode = draw(st.sampled_from([None, "custom", "passthrough"]))
    attr = f" mode='{mode}'" if mode else ""
    features = f"<hyperv{attr}>{'' if mode == 'passthrough' else hv}</hyperv>"
    if draw(st.booleans()):
        features += "<kvm><hidden state='on'/></kvm>"
    timers = "<timer name='hypervclock' present='yes'/>" if draw(st.booleans()) else ""
    return features, timers


@st.composite
def file_backing(draw: st.DrawFn) -> str:
    """``<memoryBacking>`` of file-backed RAM (never preallocated: RAM may be 2 GiB here)."""
    parts = ["<source type='file'/>"]
    if draw(st.booleans()):
        parts.append(f"<access mode='{draw(st.sampled_from(['shared', 'private']))}'/>")
    if draw(st.booleans()):
        parts.append(f"<allocation mode='ondemand' threads='{draw(st.integers(1, 4))}'/>")
    if draw(st.booleans()):
        parts.append("<discard/>")
    return f"<memoryBacking>{''.join(parts)}</memoryBacking>"


@st.composite
def hugepage_backing(draw: st.DrawFn, ncells: int) -> str:
    """``<memoryBacking><hugepages>``: the default size, one size, or one per NUMA cell."""
    pages = ""
    kind = draw(st.sampled_from(["bare", "sized"] + (["per-node"] if ncells else [])))
    if kind == "sized":
        pages = "<page size='2048' unit='KiB'/>"
    elif kind == "per-node":
        size = st.sampled_from(["2048", "1048576"])
        sizes = draw(st.lists(size, min_size=ncells, max_size=ncells))
        named = draw(st.lists(st.booleans(), min_size=ncells, max_size=ncells))
        pages = "".join(
            f"<page size='{size}' unit='KiB' nodeset='{i}'/>"
            for i, (size, on) in enumerate(zip(sizes, named, strict=True))
            if on
        )
        if draw(st.booleans()) or not pages:
            pages = "<page size='2' unit='M'/>" + pages
    extra = "<nosharepages/>" if draw(st.booleans()) else ""
    return f"<memoryBacking><hugepages>{pages}</hugepages>{extra}</memoryBacking>"


@st.composite
def domains(draw: st.DrawFn) -> str:
    q35 = draw(st.booleans())
    dtype = draw(st.sampled_from(["qemu", "kvm"]))
    head = [f"<name>{_esc(draw(names))}</name>"]
    if draw(st.booleans()):
        head.append("<uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>")
    if draw(st.booleans()):
        head.append("<genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90d</genid>")
    if draw(st.booleans()):
        head.append(f"<title>{_esc(draw(free_text).replace(chr(10), ' '))}</title>")
    if draw(st.booleans()):
        head.append(f"<description>{_esc(draw(free_text))}</description>")
    maxcpu = draw(st.integers(1, 8))
    numa = draw(numa_and_memory_devices(maxcpu)) if draw(st.booleans()) else None
    head.append(numa[0] if numa else draw(memory()))
    current = draw(st.integers(1, maxcpu))
    head.append(f"<vcpu current='{current}'>{maxcpu}</vcpu>")
    iothreads = draw(st.integers(1, 3)) if draw(st.booleans()) else 0
    if iothreads:
        head.append(f"<iothreads>{iothreads}</iothreads>")
    if draw(st.booleans()):
        head.append(draw(tuning(maxcpu, iothreads)))
    if draw(st.booleans()):
        head.append(
            "<sysinfo type='smbios'><bios><entry name='vendor'>"
            f"{_esc(draw(free_text))}</entry></bios><system><entry name='serial'>"
            f"{_esc(draw(free_text))}</entry></system><oemStrings><entry>"
            f"{_esc(draw(free_text))}</entry></oemStrings></sysinfo>"
        )
        smbios = "<smbios mode='sysinfo'/>"
    else:
        smbios = ""
    boots = draw(st.lists(st.sampled_from(["hd", "cdrom", "network"]), max_size=3, unique=True))
    os_ = f"<type arch='x86_64' machine='{'q35' if q35 else 'pc'}'>hvm</type>"
    firmware = draw(st.sampled_from(["", "efi", "loader"]))
    if firmware == "efi":
        secure_boot_off = "<firmware><feature enabled='no' name='secure-boot'/></firmware>"
        os_ = secure_boot_off + os_
    elif firmware == "loader":
        os_ += (
            "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
            "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/tmp/nvram.fd</nvram>"
        )
    os_ += "".join(f"<boot dev='{b}'/>" for b in boots)
    os_ += smbios
    if draw(st.booleans()):
        os_ += "<kernel>/boot/vmlinuz</kernel><cmdline>" + _esc(draw(free_text)) + "</cmdline>"
    head.append(f"<os firmware='efi'>{os_}</os>" if firmware == "efi" else f"<os>{os_}</os>")
    backing = draw(st.sampled_from(["", "memfd", "tuned", "file", "hugepages"]))
    if backing == "file":
        head.append(draw(file_backing()))
    elif backing == "hugepages":
        head.append(draw(hugepage_backing(numa[1].count("<cell ") if numa else 0)))
    elif backing == "memfd":
        head.append("<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>")
    elif backing == "tuned":
        head.append(
            "<memoryBacking>"
            + "".join(
                draw(
                    st.lists(
                        st.sampled_from(
                            [
                                "<nosharepages/>",
                                "<allocation mode='immediate'/>",
                                # QEMU's virtio-mem refuses locked memory (asvirt says so).
                                *([] if numa and "virtio-mem" in numa[2] else ["<locked/>"]),
                            ]
                        ),
                        unique=True,
                    )
                )
            )
            + "</memoryBacking>"
        )
    feats = draw(st.lists(st.sampled_from(["<acpi/>", "<apic/>", "<pae/>"]), unique=True))
    if numa and "<acpi/>" not in feats:
        feats.append("<acpi/>")  # QEMU hotplugs DIMMs through ACPI
    windows, hv_timers = draw(windows_features()) if draw(st.booleans()) else ("", "")
    if feats or windows:
        head.append(f"<features>{''.join(feats)}{windows}</features>")
    topology = ""
    if draw(st.booleans()):
        topology = f"<topology sockets='1' cores='{maxcpu}' threads='1'/>"
    if topology or numa:
        head.append(f"<cpu>{topology}{numa[1] if numa else ''}</cpu>")
    clock = draw(st.sampled_from(["utc", "localtime"]))
    timers = draw(st.lists(st.sampled_from(["rtc", "pit", "hpet"]), unique=True))
    head.append(
        f"<clock offset='{clock}'>"
        + "".join(
            f"<timer name='{t}' tickpolicy='delay'/>"
            if t != "hpet"
            else "<timer name='hpet' present='no'/>"
            for t in timers
        )
        + hv_timers
        + "</clock>"
    )
    for tag in ("on_poweroff", "on_reboot", "on_crash"):
        if draw(st.booleans()):
            head.append(
                f"<{tag}>{draw(st.sampled_from(['destroy', 'restart', 'preserve']))}</{tag}>"
            )
    devs = draw(devices(q35)) + (numa[2] if numa else "")
    if "<acpi/>" in feats and draw(st.booleans()):
        devs += (
            "<pstore backend='acpi-erst'><path>/tmp/erst</path><size unit='KiB'>64</size></pstore>"
        )
    label = draw(st.sampled_from(SECLABELS))
    return f"<domain type='{dtype}'>{''.join(head)}<devices>{devs}</devices>{label}</domain>"


def _esc(text: str) -> str:
    return quoteattr(text)[1:-1]
