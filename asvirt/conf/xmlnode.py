"""Strict reading and plain writing of libvirt-style XML.

Reading: :class:`Node` wraps an lxml element and records every attribute and child element
the parser looks at. :meth:`Node.finish` then raises
:class:`~asvirt.errors.ConfigUnsupportedError` naming whatever was left unread, so an
element or attribute asvirt does not understand can never be dropped silently: it is either
parsed, deliberately ignored (:meth:`Node.ignore`), or reported.

Writing: :class:`XElem` is a tiny element tree serialized the way libvirt prints XML
(two-space indentation, single-quoted attributes), without going through lxml.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from lxml import etree

from ..errors import ConfigUnsupportedError, XMLError


class InvalidValueError(XMLError):
    """A value is malformed or out of range (``index='x'``, memory 0, a bad UUID...)."""


def _local(el: etree._Element) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        return "?"
    if tag.startswith("{"):
        prefix = el.prefix
        local = tag.split("}", 1)[1]
        return f"{prefix}:{local}" if prefix else local
    return tag


class Node:
    """One element being parsed; see the module docstring."""

    __slots__ = ("_by_tag", "_seen_attrs", "_seen_tags", "el", "path")

    def __init__(self, el: etree._Element, path: tuple[str, ...]) -> None:
        self.el = el
        self.path = path
        self._seen_attrs: set[str] = set()
        self._seen_tags: set[str] = set()
        self._by_tag: dict[str, list[etree._Element]] | None = None

    # -- naming ----------------------------------------------------------------------------------

    @property
    def tag(self) -> str:
        return self.path[-1]

    @property
    def where(self) -> str:
        """The element's place for messages: ``<disk><driver>`` (``<devices>`` is implied)."""
        parts = self.path[1:] if len(self.path) > 1 and self.path[0] == "devices" else self.path
        return "".join(f"<{p}>" for p in parts)

    # -- attributes ------------------------------------------------------------------------------

    def attr(self, name: str, default: str | None = None) -> str | None:
        self._seen_attrs.add(name)
        value = self.el.get(name)
        return default if value is None else value

    def required(self, name: str) -> str:
        value = self.attr(name)
        if value is None or not value.strip():
            raise XMLError(f"missing attribute '{name}' of {self.where}")
        return value

    def choice(self, name: str, allowed: Collection[str], default: str | None = None) -> str | None:
        """An attribute that must be one of ``allowed``; anything else is unsupported."""
        value = self.attr(name)
        if value is None:
            return default
        if value not in allowed:
            raise self.unsupported_value(name, value, allowed)
        return value

    def yesno(self, name: str) -> bool | None:
        value = self.attr(name)
        if value is None:
            return None
        if value not in ("yes", "no"):
            raise InvalidValueError(
                f"invalid value '{value}' for {name} of {self.where}: use yes or no"
            )
        return value == "yes"

    def onoff(self, name: str) -> str | None:
        value = self.attr(name)
        if value is None:
            return None
        if value not in ("on", "off"):
            raise InvalidValueError(
                f"invalid value '{value}' for {name} of {self.where}: use on or off"
            )
        return value

    def integer(
        self,
        name: str,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        hex_ok: bool = False,
    ) -> int | None:
        value = self.attr(name)
        if value is None:
            return None
        return self.to_int(value, name, minimum=minimum, maximum=maximum, hex_ok=hex_ok)

    def to_int(
        self,
        value: str,
        name: str,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        hex_ok: bool = False,
    ) -> int:
        text = value.strip()
        try:
            is_hex = hex_ok and text[:2].lower() == "0x"
            number = int(text[2:], 16) if is_hex else int(text, 10)
            if text[:1] in "+" or "_" in text:
                raise ValueError(text)
        except ValueError:
            raise InvalidValueError(f"invalid value '{value}' for {name} of {self.where}") from None
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            bounds = f"{minimum if minimum is not None else '...'}-{maximum or '...'}"
            raise InvalidValueError(
                f"value {number} for {name} of {self.where} is out of range {bounds}"
            )
        return number

    # -- children --------------------------------------------------------------------------------

    def _index(self) -> dict[str, list[etree._Element]]:
        if self._by_tag is None:
            by_tag: dict[str, list[etree._Element]] = {}
            for child in self.el.iterchildren(etree.Element):
                by_tag.setdefault(_local(child), []).append(child)
            self._by_tag = by_tag
        return self._by_tag

    def children(self, tag: str) -> list[Node]:
        self._seen_tags.add(tag)
        return [Node(el, (*self.path, tag)) for el in self._index().get(tag, ())]

    def child(self, tag: str) -> Node | None:
        found = self.children(tag)
        if len(found) > 1:
            raise XMLError(f"{self.where} has more than one <{tag}>")
        return found[0] if found else None

    def child_text(self, tag: str) -> str | None:
        """The text of the child ``tag`` (which must have no attributes or children)."""
        node = self.child(tag)
        if node is None:
            return None
        text = node.text()
        node.finish()
        return text

    def text(self) -> str:
        return (self.el.text or "").strip()

    def ignore(self, *names: str) -> None:
        """Mark attributes or child tags as read without looking at them."""
        self._seen_attrs.update(names)
        self._seen_tags.update(names)

    def tags_in_order(self) -> Iterator[tuple[str, etree._Element]]:
        for child in self.el.iterchildren(etree.Element):
            yield _local(child), child

    # -- the check -------------------------------------------------------------------------------

    def finish(self) -> None:
        """Raise ConfigUnsupportedError for the first attribute or child nobody read."""
        for key in self.el.attrib:
            qname = etree.QName(key)
            name, local = qname.text, qname.localname
            if name not in self._seen_attrs and local not in self._seen_attrs:
                # A password where it is not supported (a local display's) is not echoed:
                # errors are logged and shown.
                value = "..." if local == "passwd" else self.el.get(name)
                raise ConfigUnsupportedError(
                    f"unsupported configuration: attribute {local}='{value}' of {self.where} "
                    "is not supported"
                )
        for tag in self._index():
            if tag not in self._seen_tags:
                raise ConfigUnsupportedError(
                    f"unsupported configuration: <{tag}> in {self.where} is not supported"
                    if len(self.path) > 1
                    else f"unsupported configuration: <{tag}> is not supported"
                )

    # -- errors ----------------------------------------------------------------------------------

    def unsupported_value(
        self, name: str, value: str, allowed: Collection[str] | None = None
    ) -> ConfigUnsupportedError:
        hint = f" (supported: {', '.join(allowed)})" if allowed else ""
        return ConfigUnsupportedError(
            f"unsupported configuration: {name}='{value}' of {self.where} is not supported{hint}"
        )

    def unsupported(self, what: str) -> ConfigUnsupportedError:
        return ConfigUnsupportedError(f"unsupported configuration: {what} in {self.where}")


# ---------------------------------------------------------------------------------------------
# writing


def _escape_attr(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("'", "&apos;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
    )


def _escape_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class XElem:
    """An element to be written: tag, attributes in insertion order, text or children.

    What only a *secure* XML shows (libvirt's ``VIR_DOMAIN_XML_SECURE``: a display password,
    a disk's cookies) is marked where it is written (:meth:`set_secret`, ``secret=True``), and
    :meth:`serialize` leaves it out unless asked for it.
    """

    __slots__ = ("attrs", "children", "raw", "secret", "secret_attrs", "tag", "text")

    def __init__(self, tag: str, attrs: dict[str, object] | None = None, text: str | None = None):
        self.tag = tag
        self.attrs: dict[str, str] = {}
        if attrs:
            for k, v in attrs.items():
                self.set(k, v)
        self.text = text
        self.children: list[XElem] = []
        self.raw: list[str] = []
        #: The element, or these of its attributes, only in a secure XML.
        self.secret = False
        self.secret_attrs: tuple[str, ...] = ()

    def set(self, name: str, value: object) -> None:
        """Set an attribute unless ``value`` is None (ints are written in decimal)."""
        if value is None:
            return
        if isinstance(value, bool):
            value = "yes" if value else "no"
        self.attrs[name] = str(value)

    def set_secret(self, name: str, value: object) -> None:
        """Set an attribute that only a secure XML shows (unless ``value`` is None)."""
        if value is not None:
            self.set(name, value)
            self.secret_attrs += (name,)

    def add(
        self,
        tag: str,
        attrs: dict[str, object] | None = None,
        text: str | None = None,
        *,
        secret: bool = False,
    ):
        """Add a child element; ``secret``: only a secure XML shows it."""
        child = XElem(tag, attrs, text)
        child.secret = secret
        self.children.append(child)
        return child

    def add_if(self, tag: str, attrs: dict[str, object]) -> XElem | None:
        """Add ``tag`` only if at least one attribute value is not None."""
        if all(v is None for v in attrs.values()):
            return None
        return self.add(tag, attrs)

    def serialize(self, *, secure: bool = True) -> str:
        """The XML text; without ``secure``, what is marked secret is left out."""
        out: list[str] = []
        self._write(out, 0, secure)
        return "".join(out)

    def _write(self, out: list[str], depth: int, secure: bool) -> None:
        pad = "  " * depth
        items: Iterable[tuple[str, str]] = self.attrs.items()
        children = self.children
        if not secure:  # (filtered only then: the node's own files are written secure)
            if self.secret_attrs:
                items = [(k, v) for k, v in items if k not in self.secret_attrs]
            children = [c for c in children if not c.secret]
        attrs = "".join(f" {k}='{_escape_attr(v)}'" for k, v in items)
        if not children and not self.raw:
            if self.text is None:
                out.append(f"{pad}<{self.tag}{attrs}/>\n")
            else:
                out.append(f"{pad}<{self.tag}{attrs}>{_escape_text(self.text)}</{self.tag}>\n")
            return
        out.append(f"{pad}<{self.tag}{attrs}>\n")
        for child in children:
            child._write(out, depth + 1, secure)
        inner = "  " * (depth + 1)
        for fragment in self.raw:
            for line in fragment.splitlines():
                out.append(f"{inner}{line}\n")
        out.append(f"{pad}</{self.tag}>\n")
