"""Key codes for :meth:`asvirt.Domain.send_key`: libvirt's codesets, translated to what QEMU's
``send-key`` takes.

As libvirt's QEMU driver does, every key is translated to a *qnum* (QEMU's number for a key:
its XT scancode, with an ``0xE0``-prefixed one as the scancode with bit 7 set) and sent as
``{"type": "number"}``. The codesets asvirt knows (libvirt's names and numbers):

* ``linux`` (the default): Linux input event codes (``KEY_A`` is 30), by number or by name;
* ``xt``: XT (set 1) scancodes of the keys that have a single-byte one (``0x1e`` is A);
* ``atset1``: the same, and ``0xE0``-prefixed ones as a number (``0xe053`` is Delete);
* ``qnum`` (``rfb``): QEMU's numbers, sent as they are.

The Linux table covers the main block, the keypad, function keys F1-F12, the navigation and
editing keys, the modifiers, the Japanese keys of the 106-key layout and the
media keys a PC keyboard has; a Linux key outside it is refused (InvalidArgError), not
guessed.
"""

from __future__ import annotations

import enum

from .errors import InvalidArgError

#: The most keys one call presses together (libvirt's ``VIR_DOMAIN_SEND_KEY_MAX_KEYS``).
MAX_KEYS = 16


class KeycodeSet(enum.IntEnum):
    """libvirt's ``virKeycodeSet`` (the ones asvirt translates)."""

    LINUX = 0
    XT = 1
    ATSET1 = 2
    QNUM = 9


#: Codeset names as virsh takes them (``rfb`` is libvirt's old name of ``qnum``).
CODESET_NAMES = {"linux": KeycodeSet.LINUX, "xt": KeycodeSet.XT, "atset1": KeycodeSet.ATSET1,
                 "qnum": KeycodeSet.QNUM, "rfb": KeycodeSet.QNUM}  # fmt: skip

# Linux key codes 1-88 are the XT scancodes of the same keys: one list gives both.
_MAIN_NAMES = """ESC 1 2 3 4 5 6 7 8 9 0 MINUS EQUAL BACKSPACE TAB Q W E R T Y U I O P LEFTBRACE
    RIGHTBRACE ENTER LEFTCTRL A S D F G H J K L SEMICOLON APOSTROPHE GRAVE LEFTSHIFT BACKSLASH
    Z X C V B N M COMMA DOT SLASH RIGHTSHIFT KPASTERISK LEFTALT SPACE CAPSLOCK F1 F2 F3 F4 F5
    F6 F7 F8 F9 F10 NUMLOCK SCROLLLOCK KP7 KP8 KP9 KPMINUS KP4 KP5 KP6 KPPLUS KP1 KP2 KP3 KP0
    KPDOT - - 102ND F11 F12"""
_MAIN = _MAIN_NAMES.split()
#: Linux keys above 88: (name, code, XT scancode; 0xE0xx for a prefixed one).
_MORE = (
    ("ZENKAKUHANKAKU", 85, 0x76), ("RO", 89, 0x73), ("KATAKANAHIRAGANA", 93, 0x70),
    ("HENKAN", 92, 0x79), ("MUHENKAN", 94, 0x7B), ("KPENTER", 96, 0xE01C),
    ("RIGHTCTRL", 97, 0xE01D), ("KPSLASH", 98, 0xE035), ("SYSRQ", 99, 0x54),
    ("RIGHTALT", 100, 0xE038),
    ("HOME", 102, 0xE047), ("UP", 103, 0xE048), ("PAGEUP", 104, 0xE049), ("LEFT", 105, 0xE04B),
    ("RIGHT", 106, 0xE04D), ("END", 107, 0xE04F), ("DOWN", 108, 0xE050),
    ("PAGEDOWN", 109, 0xE051), ("INSERT", 110, 0xE052), ("DELETE", 111, 0xE053),
    ("MUTE", 113, 0xE020), ("VOLUMEDOWN", 114, 0xE02E), ("VOLUMEUP", 115, 0xE030),
    ("POWER", 116, 0xE05E), ("KPEQUAL", 117, 0x59), ("PAUSE", 119, 0xE046),
    ("KPCOMMA", 121, 0x7E), ("YEN", 124, 0x7D),
    ("LEFTMETA", 125, 0xE05B), ("RIGHTMETA", 126, 0xE05C), ("COMPOSE", 127, 0xE05D),
    ("SLEEP", 142, 0xE05F), ("WAKEUP", 143, 0xE063),
)  # fmt: skip

#: Linux key names (``KEY_A``) and their codes.
LINUX_NAMES: dict[str, int] = {
    f"KEY_{name}": code for code, name in enumerate(_MAIN, start=1) if name != "-"
} | {f"KEY_{name}": code for name, code, _ in _MORE}


def _qnum(scancode: int) -> int:
    """QEMU's number for an XT scancode (``0xE0xx``: prefixed)."""
    return (scancode & 0x7F) | 0x80 if scancode >> 8 == 0xE0 else scancode


#: Linux code -> qnum.
_LINUX_QNUM: dict[int, int] = {code: code for code in LINUX_NAMES.values() if code <= 88} | {
    code: _qnum(xt) for _, code, xt in _MORE
}


def codeset(name: str | int | KeycodeSet) -> KeycodeSet:
    """A codeset by virsh's name (``linux``, ``xt``...) or libvirt's number."""
    if isinstance(name, str):
        found = CODESET_NAMES.get(name.lower())
        if found is None:
            raise InvalidArgError(f"unknown codeset '{name}'")
        return found
    try:
        return KeycodeSet(name)
    except ValueError:
        raise InvalidArgError(f"unsupported codeset {name}") from None


def keycode(codes: KeycodeSet, key: str | int) -> int:
    """A key of ``codes`` as a number: a number as it is (``30``, ``0x1e``), or a name of the
    codeset's (``KEY_A`` in ``linux``)."""
    if isinstance(key, int):
        return key
    if codes is KeycodeSet.LINUX and key in LINUX_NAMES:
        return LINUX_NAMES[key]
    try:
        return int(key, 0)
    except ValueError:
        raise InvalidArgError(f"invalid keycode: '{key}'") from None


def to_qnum(codes: KeycodeSet, key: int) -> int:
    """``key`` of ``codes`` as QEMU's number; InvalidArgError for one it has no key for."""
    qnum: int | None
    if codes is KeycodeSet.QNUM:
        qnum = key if 0 < key <= 0xFF else None
    elif codes is KeycodeSet.LINUX:
        qnum = _LINUX_QNUM.get(key)
    elif codes is KeycodeSet.XT:
        qnum = key if 0 < key < 0x80 else None
    else:  # ATSET1
        qnum = (
            _qnum(key) if 0 < key < 0x80 or (key >> 8 == 0xE0 and 0 < key & 0xFF < 0x80) else None
        )
    if qnum is None:
        raise InvalidArgError(
            f"cannot translate keycode {key} of {codes.name.lower()} codeset to qnum keycode"
        )
    return qnum


__all__ = [
    "CODESET_NAMES",
    "LINUX_NAMES",
    "MAX_KEYS",
    "KeycodeSet",
    "codeset",
    "keycode",
    "to_qnum",
]
