"""Firmware for ``<os firmware='efi'>`` and friends, from QEMU's firmware descriptors.

QEMU documents a JSON interop format (``docs/interop/firmware.json``) in which firmware
packages describe each build they install: the interfaces it offers (``uefi``, ``bios``), how
it is mapped (a pflash executable and an NVRAM template, or a memory image), the machines it
runs on and its features (``secure-boot``, ``enrolled-keys``, ``requires-smm``...). libvirt
reads the same files, from the same directories, lowest-numbered file name first with later
directories overriding earlier ones by name, and picks the first descriptor that satisfies
the domain; so does :func:`select_firmware`.

Like libvirt since 9.2, the choice is made once, when the domain is defined: the paths it
picked are written into the definition (``<loader>``, ``<nvram>``), so that a firmware
package update cannot silently change what an existing domain boots.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os

from ...conf.domain import DomainDef, Loader, NVRam
from ...errors import ConfigUnsupportedError, XMLError
from ...log import get_logger
from .interop import interop_dirs, interop_documents

log = get_logger("asvirt.qemu.firmware")

#: Where descriptors live, in libvirt's order of precedence (later names override earlier).
DESCRIPTOR_DIRS = interop_dirs("firmware")


@dataclasses.dataclass(frozen=True)
class FirmwareDescriptor:
    """One firmware build, as its JSON descriptor describes it."""

    path: str
    interfaces: tuple[str, ...]
    device: str  # flash | memory | kernel
    executable: str | None
    executable_format: str
    nvram_template: str | None
    targets: tuple[tuple[str, tuple[str, ...]], ...]  # (architecture, machine globs)
    features: frozenset[str]

    def runs(self, arch: str, machine: str) -> bool:
        return any(
            a == arch and any(fnmatch.fnmatchcase(machine, glob) for glob in globs)
            for a, globs in self.targets
        )


def parse_descriptor(path: str, data: object) -> FirmwareDescriptor:
    """A descriptor from its decoded JSON; ValueError if it is not one."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    mapping = data.get("mapping") or {}
    device = mapping.get("device", "")
    executable = mapping.get("executable") or {}
    template = mapping.get("nvram-template") or {}
    if device == "memory":
        executable = {"filename": mapping.get("filename"), "format": "raw"}
    targets = tuple(
        (str(t.get("architecture", "")), tuple(str(m) for m in t.get("machines", [])))
        for t in data.get("targets", [])
        if isinstance(t, dict)
    )
    return FirmwareDescriptor(
        path=path,
        interfaces=tuple(str(i) for i in data.get("interface-types", [])),
        device=str(device),
        executable=executable.get("filename"),
        executable_format=str(executable.get("format", "raw")),
        nvram_template=template.get("filename"),
        targets=targets,
        features=frozenset(str(f) for f in data.get("features", [])),
    )


def load_descriptors(dirs: tuple[str, ...] = DESCRIPTOR_DIRS) -> list[FirmwareDescriptor]:
    """Every readable descriptor, in the order libvirt considers them (:mod:`.interop`).

    A file in a later directory replaces one of the same name in an earlier one; an empty
    file hides it (QEMU's documented way to disable a descriptor). Unreadable files are
    logged and skipped, as libvirt does.
    """
    out = []
    for path, data in interop_documents(dirs):
        try:
            out.append(parse_descriptor(path, data))
        except (ValueError, AttributeError, TypeError) as err:
            log.warning("ignoring unreadable firmware descriptor", path=path, error=str(err))
    return out


def select_firmware(
    d: DomainDef,
    *,
    nvram_dir: str | None,
    descriptors: list[FirmwareDescriptor] | None = None,
) -> None:
    """Fill in ``<loader>``/``<nvram>`` (and SMM) for ``d``, in place, as libvirt does.

    * ``<os firmware='efi'>``: the first UEFI descriptor for the machine that has every
      ``<firmware><feature enabled='yes'>`` and none of the ``enabled='no'`` ones;
    * a pflash ``<loader>`` without ``<nvram>``: the template of the descriptor whose
      executable it is, and a per-domain NVRAM path;
    * Secure Boot (a descriptor saying ``requires-smm``, or ``<loader secure='yes'>``)
      turns ``<smm>`` on, which it cannot work without.

    ``nvram_dir`` is where per-domain NVRAM files go (``NAME_VARS.fd``); None leaves the path
    unset for whoever builds the command line to place. Raises ConfigUnsupportedError when no
    firmware fits, naming what was asked.
    """
    os_ = d.os
    machine = os_.machine or ""
    if os_.firmware == "efi" and (os_.loader is None or os_.loader.path is None):
        found = _pick(d, descriptors)
        picked = os_.loader or Loader()
        picked.path = found.executable
        if found.device == "flash":
            picked.type = picked.type or "pflash"
            picked.readonly = True if picked.readonly is None else picked.readonly
        else:
            picked.type = picked.type or "rom"
        if "secure-boot" in found.features and picked.type == "pflash":
            picked.secure = True
        os_.loader = picked
        if found.device == "flash" and not picked.stateless:
            nvram = os_.nvram or NVRam()
            nvram.template = nvram.template or found.nvram_template
            os_.nvram = nvram
        if "requires-smm" in found.features:
            _need_smm(d, f"firmware '{found.executable}'")
    if os_.loader is None:
        return
    loader = os_.loader
    if loader.type == "pflash" and loader.readonly and not loader.stateless:
        nvram = os_.nvram or NVRam()
        if nvram.template is None and nvram.path is None:
            found_template = _template_for(loader.path, descriptors)
            if found_template is None:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: no NVRAM template is known for the firmware "
                    f"'{loader.path}' (no descriptor in {', '.join(DESCRIPTOR_DIRS)} names it); "
                    "give <nvram template=...>"
                )
            nvram.template = found_template
        if nvram.path is None and nvram_dir is not None:
            nvram.path = os.path.join(nvram_dir, f"{d.name}_VARS.fd")
        os_.nvram = nvram
    if loader.secure:
        if loader.type != "pflash":
            raise XMLError("<loader secure='yes'> needs type='pflash'")
        _need_smm(d, "Secure Boot")
    if machine.startswith("pc-i440fx") and loader.secure:
        raise ConfigUnsupportedError(
            "unsupported configuration: Secure Boot needs a q35 machine (QEMU's i440FX "
            "machines have no SMM-protected flash)"
        )


def _need_smm(d: DomainDef, what: str) -> None:
    if d.features.smm == "off":
        raise ConfigUnsupportedError(
            f"unsupported configuration: {what} needs <smm state='on'/>, but it is off"
        )
    d.features.smm = "on"


def _pick(d: DomainDef, descriptors: list[FirmwareDescriptor] | None) -> FirmwareDescriptor:
    wanted = {k for k, v in d.os.firmware_features.items() if v}
    unwanted = {k for k, v in d.os.firmware_features.items() if not v}
    if "enrolled-keys" in wanted:
        wanted.add("secure-boot")  # keys are for Secure Boot; libvirt infers it too
    if d.features.smm == "off":
        unwanted.add("requires-smm")
    candidates = load_descriptors() if descriptors is None else descriptors
    for desc in candidates:
        if "uefi" not in desc.interfaces or desc.executable is None:
            continue
        if not desc.runs(d.os.arch or "x86_64", d.os.machine or ""):
            continue
        if desc.device not in ("flash", "memory"):
            continue
        if desc.executable_format != "raw":
            continue  # QEMU 7.2 maps raw images to pflash; qcow2 builds are for newer ones
        if not wanted <= desc.features or unwanted & desc.features:
            continue
        if (
            d.os.loader is not None
            and d.os.loader.secure is False
            and ("secure-boot" in desc.features)
        ):
            continue
        return desc
    what = ", ".join(
        f"{name}={'yes' if on else 'no'}" for name, on in sorted(d.os.firmware_features.items())
    )
    raise ConfigUnsupportedError(
        f"unsupported configuration: no UEFI firmware for machine '{d.os.machine}'"
        + (f" with {what}" if what else "")
        + f" is described in {' or '.join(DESCRIPTOR_DIRS)} (install OVMF: apt install ovmf)"
    )


def _template_for(
    executable: str | None, descriptors: list[FirmwareDescriptor] | None
) -> str | None:
    if executable is None:
        return None
    for desc in load_descriptors() if descriptors is None else descriptors:
        if desc.executable == executable and desc.nvram_template:
            return desc.nvram_template
    return None


__all__ = [
    "DESCRIPTOR_DIRS",
    "FirmwareDescriptor",
    "load_descriptors",
    "parse_descriptor",
    "select_firmware",
]
