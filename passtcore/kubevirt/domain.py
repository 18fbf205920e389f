"""The passt binding's domain mutation: VMI JSON + domain XML -> new domain XML.

This is the whole of the hook sidecar's ``OnDefineDomain`` logic
(kubevirt-binding.md 1.4-1.8), with no gRPC, so that it can be tested on its
own. ``on_define_domain(vmi_json, domain_xml, binding_name=, flavour=)`` returns
the new document or raises ``HookError`` whose message is upstream's error text.

Design:

* **The VMI** is read with ``json`` and only the fields the binding uses are
  looked at; they are type-checked like Go's ``encoding/json`` would (same
  error texts, case-insensitive key match, ``null`` = zero value), and JSON
  syntax errors are reworded to Go's messages (``unexpected end of JSON input``,
  ``invalid character 'x' looking for beginning of value``...).
* **The domain** is edited *in place, as text*: expat parses it once to find the
  byte span of every element, and the edit splices the new ``<interface>`` (and
  ``<memoryBacking>``) into the original bytes. Everything else - comments,
  processing instructions, ``qemu:`` and other namespace prefixes, unknown
  elements, attribute quoting, whitespace, order - survives byte for byte,
  which no DOM round trip guarantees. The inserted elements are indented like
  their neighbours. XML errors are reported with Go's ``encoding/xml`` texts
  (``EOF``, ``XML syntax error on line N: unexpected EOF``...).
* **Port forwards** use the model shared with the daemon,
  ``passtcore.portspec.PortForward``/``PortRange``; ``portforward_to_xml`` and
  ``portforward_from_xml`` convert it to and from ``<portForward>`` elements.

Flavours: ``vhostuser`` (default, upstream's current era E: ``<interface
type="vhostuser">`` plus the shared-memory ``<memoryBacking>`` rule) and
``stream`` (``<interface type="user">``, memoryBacking untouched).
"""
from __future__ import annotations

import json
import re
import xml.parsers.expat
from dataclasses import dataclass, field
from typing import Any

from passtcore.portspec import PortForward, PortRange

FLAVOURS = ("vhostuser", "stream")
INTERFACE_TYPE = {"vhostuser": "vhostuser", "stream": "user"}
DEFAULT_BINDING_NAME = "passt"
PASST_LOG_FILE = "/var/run/kubevirt/passt.log"
USER_ALIAS_PREFIX = "ua-"
ISTIO_INJECT_ANNOTATION = "sidecar.istio.io/inject"
# Envoy's reserved ports, in upstream's order (kubevirt-binding.md 1.7).
ISTIO_RESERVED_PORTS = (15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090)
_PCI_RE = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


class HookError(Exception):
    """An OnDefineDomain failure; ``str(err)`` is the text the client gets."""


# --------------------------------------------------------------------------
# Go-compatible quoting and JSON errors


def go_quote(text: str) -> str:
    """Go's ``%q`` / ``strconv.Quote`` of a string."""
    out = ['"']
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
             "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}
    for ch in text:
        code = ord(ch)
        if ch in named:
            out.append(named[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _go_quote_char(text: str, pos: int) -> str:
    """Go's ``quoteChar`` of the byte at character ``pos`` (first UTF-8 byte, as Latin-1)."""
    byte = text[pos].encode("utf-8", "surrogatepass")[0]
    if byte == 0x27:
        return "'\\''"
    if byte == 0x22:
        return "'\"'"
    return "'" + go_quote(chr(byte))[1:-1] + "'"


def _innermost_container(text: str, pos: int) -> str:
    """``{`` or ``[``: the JSON container open at ``pos`` (strings skipped)."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_json_syntax_error(text: str, err: json.JSONDecodeError) -> str:
    pos = err.pos
    if pos >= len(text.rstrip(" \t\r\n")) or err.msg.startswith("Unterminated string"):
        return "unexpected end of JSON input"
    char = _go_quote_char(text, pos)
    msg = err.msg
    if msg.startswith("Expecting property name"):
        return f"invalid character {char} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {char} after object key"
    if msg.startswith("Expecting ','"):
        where = "object key:value pair" if _innermost_container(text, pos) == "{" else "array element"
        return f"invalid character {char} after {where}"
    if msg.startswith("Extra data"):
        return f"invalid character {char} after top-level value"
    if msg.startswith("Invalid control character"):
        return f"invalid character {char} in string literal"
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        return f"invalid character {_go_quote_char(text, min(pos + 1, len(text) - 1))} in string escape code"
    return f"invalid character {char} looking for beginning of value"


class _BadConstant(ValueError):
    """NaN/Infinity: literals Go's JSON does not have."""


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


class _Literal(float):
    """A JSON number Go would not put in an integer (fraction, exponent, huge): keeps its text."""

    literal: str

    @classmethod
    def parse(cls, text: str) -> _Literal:
        try:
            value = cls(text)
        except OverflowError:
            value = cls("inf")
        value.literal = text
        return value


def _parse_int(text: str) -> int | _Literal:
    # Python refuses to convert more than 4300 digits; Go reports such numbers as out of range
    return int(text) if len(text) <= 30 else _Literal.parse(text)


def load_vmi(data: bytes | memoryview | str) -> dict[str, Any]:
    """Decode the VMI JSON; errors are ``failed to unmarshal VMI: <Go's text>``."""
    text = data if isinstance(data, str) else str(data, "utf-8", "replace")  # any bytes-like
    if text.startswith("\ufeff"):
        raise HookError("failed to unmarshal VMI: invalid character 'ï' looking for beginning of value")
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_Literal.parse,
                           parse_int=_parse_int)
    except json.JSONDecodeError as err:
        raise HookError(f"failed to unmarshal VMI: {_go_json_syntax_error(text, err)}") from None
    except RecursionError:
        raise HookError("failed to unmarshal VMI: exceeded max depth") from None  # Go stops at 10000
    except _BadConstant as err:
        literal = str(err)
        pos = max(text.find(literal), 0)  # the first one; one inside a string would mislead, rare enough
        where = "looking for beginning of value"
        if literal.startswith("-"):
            pos, where = pos + 1, "in numeric literal"
        raise HookError(f"failed to unmarshal VMI: invalid character {_go_quote_char(text, pos)} {where}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HookError("failed to unmarshal VMI: json: cannot unmarshal "
                        f"{_json_kind(value)} into Go value of type v1.VirtualMachineInstance")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, _Literal):
        return f"number {value.literal}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    return {dict: "object", list: "array", str: "string"}.get(type(value), "value")


class _Fields:
    """Typed access to one JSON object as Go's decoder would fill a struct.

    ``struct`` is the Go type name and ``path`` the dotted JSON path, both used
    in Go's ``cannot unmarshal X into Go struct field S.path of type T`` text.
    """

    def __init__(self, obj: dict[str, Any], struct: str, path: str) -> None:
        self.obj, self.struct, self.path = obj, struct, path

    def _raw(self, key: str) -> Any:
        if key in self.obj:
            return self.obj[key]
        folded = key.casefold()  # encoding/json matches keys case-insensitively
        for name, value in self.obj.items():
            if name.casefold() == folded:
                return value
        return None

    def _fail(self, key: str, value: Any, gotype: str) -> HookError:
        kind = _json_kind(value)
        if kind.startswith("number") and not gotype.startswith(("int", "uint", "float")):
            kind = "number"
        where = f"{self.path}.{key}" if self.path else key
        return HookError(f"failed to unmarshal VMI: json: cannot unmarshal {kind} "
                         f"into Go struct field {self.struct}.{where} of type {gotype}")

    def sub(self, key: str, struct: str, gotype: str | None = None) -> _Fields:
        value = self._raw(key)
        if value is not None and not isinstance(value, dict):
            raise self._fail(key, value, gotype or f"v1.{struct}")
        return _Fields(value or {}, struct, f"{self.path}.{key}" if self.path else key)

    def present(self, key: str, gotype: str) -> bool:
        """A pointer-to-struct member: set unless absent or null."""
        value = self._raw(key)
        if value is not None and not isinstance(value, dict):
            raise self._fail(key, value, gotype)
        return value is not None

    def items(self, key: str, struct: str) -> list[_Fields]:
        value = self._raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(key, value, f"[]v1.{struct}")
        path = f"{self.path}.{key}" if self.path else key
        out = []
        for item in value:
            if item is not None and not isinstance(item, dict):
                raise self._fail(key, item, f"v1.{struct}")
            out.append(_Fields(item or {}, struct, path))
        return out

    def string(self, key: str) -> str:
        value = self._raw(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._fail(key, value, "string")
        return value

    def boolean(self, key: str) -> bool:
        value = self._raw(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._fail(key, value, "bool")
        return value

    def integer(self, key: str, bits: int = 32) -> int:
        value = self._raw(key)
        if value is None:
            return 0
        gotype = f"int{bits}" if bits != 64 else "int"
        if isinstance(value, (bool, float)) or not isinstance(value, int):
            raise self._fail(key, value, gotype)  # Go's ParseInt takes no fraction or exponent
        if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
            raise self._fail(key, value, gotype)
        return value

    def string_map(self, key: str, gotype: str) -> dict[str, str]:
        value = self._raw(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(key, value, gotype)
        for item in value.values():
            if item is not None and not isinstance(item, str):
                raise self._fail(key, item, "string")
        return {k: v or "" for k, v in value.items()}


# --------------------------------------------------------------------------
# The configurator: what to generate, from the VMI


@dataclass
class PasstInterface:
    """Everything the generated ``<interface>`` needs (kubevirt-binding.md 1.6)."""

    name: str
    iface_type: str
    source_dev: str
    model: str
    mac: str = ""
    pci_address: str = ""
    acpi_index: int = 0
    port_forwards: list[PortForward] = field(default_factory=list)


def port_forwards(ports: list[tuple[str, int]], istio: bool) -> list[PortForward]:
    """The ``<portForward>`` rules for ``(protocol, port)`` pairs (1.7)."""
    tcp = [PortRange(start=p, exclude=True) for p in ISTIO_RESERVED_PORTS] if istio else []
    udp: list[PortRange] = []
    for proto, port in ports:
        if port < 0:
            continue  # webhooks forbid these; upstream skips them
        kind = proto.casefold()
        if kind in ("", "tcp"):
            tcp.append(PortRange(start=port))
        elif kind == "udp":
            udp.append(PortRange(start=port))
        # anything else (SCTP...) is not forwarded by passt: ignored
    if not tcp and not udp:
        return [PortForward(proto="tcp"), PortForward(proto="udp")]  # forward everything
    out = []
    if tcp:
        out.append(PortForward(proto="tcp", ranges=tcp))
    if udp:
        out.append(PortForward(proto="udp", ranges=udp))
    return out


def configure(vmi: dict[str, Any], binding_name: str = DEFAULT_BINDING_NAME,
              flavour: str = "vhostuser") -> PasstInterface:
    """Find the pod network's interface and derive the element to generate (1.4 steps 2-3)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown binding flavour {flavour!r}, expected one of {FLAVOURS}")
    root = _Fields(vmi, "VirtualMachineInstance", "")
    metadata = root.sub("metadata", "ObjectMeta")
    spec = root.sub("spec", "VirtualMachineInstanceSpec")
    devices = spec.sub("domain", "DomainSpec").sub("devices", "Devices")
    transitional = devices.boolean("useVirtioTransitional")
    istio = metadata.string_map("annotations", "map[string]string").get(
        ISTIO_INJECT_ANNOTATION, "").casefold() == "true"

    def fail(msg: str) -> HookError:
        return HookError(f"failed to create passt configurator: {msg}")

    # Decode every field the binding reads, of every list item, before any
    # logic: Go's decoder rejects a badly typed field wherever it sits.
    networks = [(n.string("name"), n.present("pod", "v1.PodNetwork")) for n in spec.items("networks", "Network")]
    interfaces = [_decode_interface(i) for i in devices.items("interfaces", "Interface")]
    statuses = [(s.string("name"), s.string("podInterfaceName")) for s in root.sub(
        "status", "VirtualMachineInstanceStatus").items("interfaces", "VirtualMachineInstanceNetworkInterface")]

    net_name = next((name for name, pod in networks if pod), None)
    if net_name is None:
        raise fail("pod network not found")
    iface = next((i for i in interfaces if i["name"] == net_name), None)
    if iface is None:
        raise fail("no interface found")
    if iface["binding"] != binding_name:
        raise fail(f"interface {go_quote(net_name)} is not set with Passt network binding plugin")
    dev = next((d for name, d in statuses if name == net_name), None)
    if dev is None:
        raise fail("primary network interface status was not found")
    if not dev:
        raise fail("primary pod network interface name was not found")

    model = iface["model"] or "virtio"
    if model == "virtio":
        model = "virtio-transitional" if transitional else "virtio-non-transitional"
    return PasstInterface(
        name=iface["name"], iface_type=INTERFACE_TYPE[flavour], source_dev=dev, model=model,
        mac=iface["mac"], pci_address=iface["pci"], acpi_index=iface["acpi"],
        port_forwards=port_forwards(iface["ports"], istio))


def _decode_interface(iface: _Fields) -> dict[str, Any]:
    binding = iface.sub("binding", "PluginBinding").string("name") \
        if iface.present("binding", "v1.PluginBinding") else None
    return {"name": iface.string("name"), "binding": binding, "model": iface.string("model"),
            "mac": iface.string("macAddress"), "pci": iface.string("pciAddress"),
            "acpi": iface.integer("acpiIndex", 64),
            "ports": [(p.string("protocol"), p.integer("port")) for p in iface.items("ports", "Port")]}


# --------------------------------------------------------------------------
# Element rendering (a tiny builder: (tag, [(attr, value)], [children]))

Elem = tuple[str, list[tuple[str, str]], list["Elem"]]
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _escape_attr(value: str) -> str:
    value = _XML_INVALID.sub("\ufffd", value)  # like Go's EscapeText
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\t", "&#x9;").replace("\n", "&#xA;")
            .replace("\r", "&#xD;"))


def render(elem: Elem, indent: str | None = None, unit: str = "\t", newline: str = "\n") -> str:
    """Serialise; ``indent`` None = compact, else children one ``unit`` deeper."""
    tag, attrs, children = elem
    head = "<" + tag + "".join(f' {k}="{_escape_attr(v)}"' for k, v in attrs)
    if not children:
        return head + "/>"
    if indent is None:
        inner = "".join(render(c) for c in children)
        return f"{head}>{inner}</{tag}>"
    sub = indent + unit
    inner = "".join(f"{newline}{sub}{render(c, sub, unit, newline)}" for c in children)
    return f"{head}>{inner}{newline}{indent}</{tag}>"


def portforward_element(pf: PortForward) -> Elem:
    attrs = [("proto", pf.proto)]
    if pf.address:
        attrs.append(("address", pf.address))
    if pf.dev:
        attrs.append(("dev", pf.dev))
    ranges: list[Elem] = []
    for r in pf.ranges:
        rattrs = [("start", str(r.start))]
        if r.end is not None:
            rattrs.append(("end", str(r.end)))
        if r.to is not None:
            rattrs.append(("to", str(r.to)))
        if r.exclude:
            rattrs.append(("exclude", "yes"))
        ranges.append(("range", rattrs, []))
    return ("portForward", attrs, ranges)


def portforward_to_xml(pf: PortForward) -> str:
    """``<portForward proto= [address=] [dev=]><range start= [end=] [to=] [exclude="yes"]/>...``."""
    return render(portforward_element(pf))


def portforward_from_xml(elem: Any) -> PortForward:
    """A ``<portForward>`` (an ElementTree element) back to the model."""
    def number(value: str | None) -> int | None:
        return None if value is None else int(value)

    ranges = [PortRange(start=int(r.get("start")), end=number(r.get("end")), to=number(r.get("to")),
                        exclude=r.get("exclude") == "yes")
              for r in elem.findall("range")]
    return PortForward(proto=elem.get("proto"), address=elem.get("address"), dev=elem.get("dev"),
                       ranges=ranges)


def interface_element(iface: PasstInterface) -> Elem:
    """The ``<interface>`` of 1.6; raises HookError on an invalid PCI address."""
    children: list[Elem] = []
    if iface.pci_address:
        match = _PCI_RE.fullmatch(iface.pci_address)
        if match is None:
            raise HookError("failed to generate domain interface spec: "
                            f"failed to parse pci address {iface.pci_address}")
        children.append(("address", [("type", "pci")] + [
            (k, "0x" + v) for k, v in zip(("domain", "bus", "slot", "function"), match.groups())], []))
    children.append(("source", [("dev", iface.source_dev)], []))
    children.append(("model", [("type", iface.model)], []))
    if iface.mac:
        children.append(("mac", [("address", iface.mac)], []))
    children.append(("alias", [("name", USER_ALIAS_PREFIX + iface.name)], []))
    if iface.acpi_index > 0:
        children.append(("acpi", [("index", str(iface.acpi_index))], []))
    children.append(("backend", [("type", "passt"), ("logFile", PASST_LOG_FILE)], []))
    children.extend(portforward_element(pf) for pf in iface.port_forwards)
    return ("interface", [("type", iface.iface_type)], children)


MEMORY_BACKING: Elem = ("memoryBacking", [], [("source", [("type", "memfd")], []),
                                              ("access", [("mode", "shared")], [])])


# --------------------------------------------------------------------------
# The document: element spans over the original bytes


class Node:
    """One element of the parsed document and where it sits in the bytes."""

    __slots__ = ("name", "attrs", "start", "tag_end", "end", "self_closed", "children")

    def __init__(self, name: str, attrs: dict[str, str], start: int, tag_end: int,
                 self_closed: bool) -> None:
        self.name, self.attrs = name, attrs
        self.start, self.tag_end, self.self_closed = start, tag_end, self_closed
        self.end = tag_end
        self.children: list[Node] = []

    def find(self, name: str) -> Node | None:
        return next((c for c in self.children if c.name == name), None)

    def find_last(self, name: str) -> Node | None:
        # Go's decoder lets a repeated singular element overwrite: the last wins
        return next((c for c in reversed(self.children) if c.name == name), None)


# Only the elements the mutation looks at become Nodes (a domain can be MBs of
# devices): the root's children, the children of <devices> and
# <memoryBacking>, and the children of the interfaces; attributes are kept only
# where they are read. Of the other devices only the first and the last are kept
# (for indentation and the insertion point).
_KEEP_CHILDREN = {1: ("devices", "memoryBacking"), 2: ("interface",)}
_KEEP_ATTRS = ("alias", "access")


_TAG_REST = re.compile(rb"""(?:[^"'>]|"[^"]*"|'[^']*')*>""")


def _tag_end(data: bytes, start: int) -> int:
    """Index after the ``>`` closing the tag that opens at ``start`` (quotes respected)."""
    match = _TAG_REST.match(data, start + 1)
    return match.end() if match else len(data)


_ENCODING_RE = re.compile(rb"""\A\s*<\?xml[^>]*?\sencoding\s*=\s*["']([^"']*)["']""")


def parse_domain(data: bytes) -> Node:
    """Parse the domain XML into a ``Node`` tree; errors are Go's texts, wrapped."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _xml_error("XML syntax error on line 1: invalid UTF-8")  # UTF-16: Go reads UTF-8 only
    match = _ENCODING_RE.match(data)
    if match and match.group(1).decode("latin-1").lower() not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise _xml_error(f'xml: encoding "{match.group(1).decode("latin-1")}" declared '
                         "but Decoder.CharsetReader is nil")
    parser = xml.parsers.expat.ParserCreate()
    stack: list[Node | None] = []  # None: an element not tracked
    names: list[str] = []
    root: list[Node] = []
    done = [False]

    def on_start(name: str, attrs: dict[str, str]) -> None:
        depth = len(stack)
        parent = stack[-1] if stack else None
        if depth == 0 or (parent is not None and (depth == 1 or parent.name in _KEEP_CHILDREN.get(depth - 1, ()))):
            start = parser.CurrentByteIndex
            end = _tag_end(data, start)
            node = Node(name, attrs if name in _KEEP_ATTRS else {}, start, end, data[end - 2:end] == b"/>")
            siblings = parent.children if parent is not None else root
            if parent is not None and parent.name == "devices" and len(siblings) > 1 \
                    and siblings[-1].name != "interface":
                siblings.pop()  # of the other devices only the first and the last matter
            siblings.append(node)
            stack.append(node)
        else:
            stack.append(None)
        names.append(name)

    def on_end(name: str) -> None:
        node = stack.pop()
        names.pop()
        if node is not None and not node.self_closed:
            node.end = data.index(b">", parser.CurrentByteIndex) + 1
        if not stack:
            done[0] = True

    parser.StartElementHandler = on_start
    parser.EndElementHandler = on_end
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as err:
        _raise_go_error(data, parser, err, bool(root), done[0], names)
    finally:
        parser.StartElementHandler = parser.EndElementHandler = None  # no reference cycle left
    if not root:
        raise _xml_error("EOF")
    local = root[0].name.rpartition(":")[2]
    if local != "domain":
        raise _xml_error(f"expected element type <domain> but have <{local}>")
    return root[0]


def _xml_error(msg: str) -> HookError:
    return HookError(f"failed to unmarshal given domain spec: {msg}")


def _raise_go_error(data: bytes, parser: Any, err: xml.parsers.expat.ExpatError, started: bool,
                    done: bool, names: list[str]) -> None:
    """Reword an expat error as Go's encoding/xml would have reported it."""
    if done:
        return  # like Go, nothing after the root element is read
    line = f"XML syntax error on line {err.lineno}"
    at_eof = err.code in (_EXPAT_CODE["XML_ERROR_UNCLOSED_TOKEN"], _EXPAT_CODE["XML_ERROR_PARTIAL_CHAR"],
                          _EXPAT_CODE["XML_ERROR_NO_ELEMENTS"]) or parser.ErrorByteIndex >= len(data.rstrip())
    if not started and (err.code == _EXPAT_CODE["XML_ERROR_NO_ELEMENTS"] or b"<" not in data):
        raise _xml_error("EOF")  # Go skips text and comments looking for the root
    if at_eof:
        raise _xml_error(f"{line}: unexpected EOF")
    if err.code == _EXPAT_CODE["XML_ERROR_TAG_MISMATCH"] and names:
        at = data.rfind(b"</", 0, parser.ErrorByteIndex + 2)
        got = re.match(rb"</\s*([^\s>]*)", data[at:]).group(1).decode("utf-8", "replace")
        raise _xml_error(f"{line}: element <{names[-1]}> closed by </{got}>")
    raise _xml_error(f"{line}: {xml.parsers.expat.errors.messages[err.code]}")


_EXPAT_CODE = {name: xml.parsers.expat.errors.codes[getattr(xml.parsers.expat.errors, name)]
               for name in ("XML_ERROR_NO_ELEMENTS", "XML_ERROR_UNCLOSED_TOKEN", "XML_ERROR_PARTIAL_CHAR",
                            "XML_ERROR_TAG_MISMATCH")}


class _Layout:
    """How the document is indented, so inserted elements look like their neighbours."""

    def __init__(self, data: bytes, root: Node) -> None:
        self.data = data
        self.newline = "\r\n" if b"\r\n" in data[:root.tag_end + 200] else "\n"  # keep CRLF files CRLF
        first = root.children[0] if root.children else None
        indent = self.indent(first) if first else None
        base = self.indent(root) or ""
        if indent is not None and indent.startswith(base) and len(indent) > len(base):
            self.unit: str | None = indent[len(base):]
        elif first is None or indent is not None:
            self.unit = "\t"
        else:
            self.unit = None  # compact document: insert compactly

    def indent(self, node: Node) -> str | None:
        """The whitespace between the line start and ``node``, None if not at a line start."""
        i = node.start
        while i > 0 and self.data[i - 1] in b" \t":
            i -= 1
        if i > 0 and self.data[i - 1] not in b"\n":
            return None
        return self.data[i:node.start].decode("ascii")

    def child_indent(self, parent: Node) -> str | None:
        if self.unit is None:
            return None
        for child in parent.children:
            found = self.indent(child)
            if found is not None:
                return found
        own = self.indent(parent)
        return None if own is None else own + self.unit

    def render(self, elem: Elem, indent: str | None) -> bytes:
        text = render(elem, indent, self.unit or "", self.newline) if indent is not None else render(elem)
        return text.encode("utf-8")

    def insert_after(self, node: Node, elem: Elem) -> tuple[int, int, bytes]:
        indent = self.indent(node)
        lead = b"" if indent is None else (self.newline + indent).encode()
        return node.end, node.end, lead + self.render(elem, indent)

    def append_child(self, parent: Node, elem: Elem) -> tuple[int, int, bytes]:
        indent = self.child_indent(parent)
        own = self.indent(parent)
        text = self.render(elem, indent)
        lead = b"" if indent is None else (self.newline + indent).encode()
        trail = b"" if own is None or indent is None else (self.newline + own).encode()
        if parent.self_closed:
            tag = self.data[parent.start:parent.end - 2].rstrip()
            return parent.start, parent.end, (tag + b">" + lead + text + trail
                                              + b"</" + parent.name.encode() + b">")
        if parent.children:
            return self.insert_after(parent.children[-1], elem) if indent is not None \
                else (parent.children[-1].end, parent.children[-1].end, text)
        content = self.data[parent.tag_end:self.data.rindex(b"<", 0, parent.end)]
        if b"\n" in content:
            trail = b""
        return parent.tag_end, parent.tag_end, lead + text + trail


def _apply(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Splice non-overlapping ``(start, end, text)`` edits in; one copy of the document."""
    view = memoryview(data)
    pieces: list[bytes | memoryview] = []
    pos = 0
    for start, end, text in sorted(edits, key=lambda e: e[0]):
        pieces += (view[pos:start], text)
        pos = end
    pieces.append(view[pos:])
    return b"".join(pieces)


def _alias_name(iface: Node) -> str:
    alias = iface.find_last("alias")
    name = alias.attrs.get("name", "") if alias is not None else ""
    return name[len(USER_ALIAS_PREFIX):] if name.startswith(USER_ALIAS_PREFIX) else name


def mutate(data: bytes, root: Node, iface: PasstInterface, flavour: str = "vhostuser") -> bytes:
    """Place the generated interface and, for vhost-user, the memoryBacking (1.5)."""
    backing = root.find_last("memoryBacking")
    if flavour == "vhostuser" and backing is not None:
        access = backing.find_last("access")
        if access is not None and access.attrs.get("mode", "") != "shared":
            raise HookError("memory backing access mode must be 'shared'; cannot override "
                            f"existing mode: {go_quote(access.attrs.get('mode', ''))}")
    elem = interface_element(iface)
    layout = _Layout(data, root)
    devices = root.find("devices")
    if devices is None:
        data = _apply(data, [layout.append_child(root, ("devices", [], [elem]))])
        root = parse_domain(data)  # spans moved: re-read them (rare: no <devices> at all)
        layout = _Layout(data, root)
        edits = []
    else:
        interfaces = [c for c in devices.children if c.name == "interface"]
        target = next((c for c in interfaces if _alias_name(c) == iface.name), None)
        if target is not None:
            edits = [(target.start, target.end, layout.render(elem, layout.indent(target)))]
        elif interfaces:
            edits = [layout.insert_after(interfaces[-1], elem)]
        else:
            edits = [layout.append_child(devices, elem)]
    if flavour == "vhostuser" and backing is None:
        memory = [c for c in root.children if c.name in ("memory", "currentMemory", "maxMemory")]
        edits.append(layout.insert_after(memory[-1], MEMORY_BACKING) if memory
                     else layout.append_child(root, MEMORY_BACKING))
    return _apply(data, edits)  # they never overlap: one inside <devices>, one outside


def on_define_domain(vmi_json: bytes | memoryview | str, domain_xml: bytes | str,
                     binding_name: str = DEFAULT_BINDING_NAME, flavour: str = "vhostuser") -> bytes:
    """The whole OnDefineDomain hook (1.4): new domain XML, or HookError."""
    if isinstance(domain_xml, str):
        domain_xml = domain_xml.encode("utf-8")
    iface = configure(load_vmi(vmi_json), binding_name or DEFAULT_BINDING_NAME, flavour)
    root = parse_domain(domain_xml)
    return mutate(domain_xml, root, iface, flavour)
