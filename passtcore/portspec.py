"""The port-forwarding model shared by the daemon and the KubeVirt binding.

One ``PortForward`` is what libvirt's ``<portForward proto= address= dev=>``
element holds and what one ``-t``/``-u`` option of passt carries:
``[ADDR][%DEV]/LIST`` or ``all``. ``to_spec()`` renders it exactly as libvirt's
``qemuPasstAddNetProps`` does (passt-reference.md 2.4 b), ``parse_spec()`` is
passt's grammar (passt-reference.md 3.2) and ``expand()`` turns a parsed spec
into the concrete host-port -> guest-port map the daemon binds.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PortRange:
    """``<range start= end= to= exclude=/>``: host ports start..end (-> to..)."""

    start: int
    end: int | None = None
    to: int | None = None
    exclude: bool = False

    def to_spec(self) -> str:
        text = ("~" if self.exclude else "") + str(self.start)
        if self.end is not None:
            text += f"-{self.end}"
        if self.to is not None:
            text += f":{self.to}"
            if self.end is not None:
                text += f"-{self.end + self.to - self.start}"
        return text


@dataclass
class PortForward:
    """One ``<portForward>``: protocol ``tcp``/``udp``, optional bind address/device."""

    proto: str
    address: str | None = None
    dev: str | None = None
    ranges: list[PortRange] = field(default_factory=list)

    def to_spec(self) -> str:
        """The ``--tcp-ports``/``--udp-ports`` argument libvirt would pass."""
        prefix = (self.address or "") + (f"%{self.dev}" if self.dev else "")
        body = ",".join(r.to_spec() for r in self.ranges) if self.ranges else "all"
        return f"{prefix}/{body}" if prefix else body

    def to_args(self) -> list[str]:
        flag = {"tcp": "--tcp-ports", "udp": "--udp-ports"}[self.proto]
        return [flag, self.to_spec()]


# --- passt's -t/-u grammar (passt-reference 3.2) ------------------------------

EPHEMERAL_MIN = 49152  # PORT_EPHEMERAL_MIN: "all" and exclusion-only lists stop below it
IFNAMSIZ = 16
KEYWORDS = ("none", "all", "auto")


class PortSpecError(ValueError):
    """A ``-t``/``-u`` argument passt would reject; ``str()`` is passt's message."""

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(f"{message}: {text}" if text else message)
        self.message = message
        self.text = text


@dataclass(frozen=True)
class PortSpec:
    """One parsed ``-t``/``-u`` argument.

    ``mode`` is ``"none"``, ``"all"``, ``"auto"`` or ``"ports"``. ``forwards`` holds
    the non-excluded items as ``(first, last, guest_first)``, ``excludes`` the
    ``~`` ranges as ``(first, last)``. ``expand()`` gives host port -> guest port.
    """

    proto: str
    mode: str
    address: str | None = None
    ifname: str | None = None
    forwards: tuple[tuple[int, int, int], ...] = ()
    excludes: tuple[tuple[int, int], ...] = ()
    text: str = ""

    def expand(self) -> dict[int, int]:
        """Host port -> guest port. Port 0 is never bound (passt's 2023 quirk, not kept);
        ``auto`` (pasta's scan) expands to nothing here: the scan is dynamic."""
        if self.mode in ("none", "auto"):
            return {}
        excluded: set[int] = set()
        for first, last in self.excludes:
            excluded.update(range(first, last + 1))
        if self.mode == "all" or not self.forwards:
            return {p: p for p in range(1, EPHEMERAL_MIN) if p not in excluded}
        out: dict[int, int] = {}
        for first, last, guest in self.forwards:
            delta = guest - first
            for p in range(max(first, 1), last + 1):
                if p not in excluded:
                    out[p] = (p + delta) & 0xFFFF
        return out

    def to_forward(self) -> PortForward:
        """The libvirt ``<portForward>`` model of this spec (inverse of ``to_spec``)."""
        ranges = [PortRange(f, l if l != f else None, g if g != f else None)
                  for f, l, g in self.forwards]
        ranges += [PortRange(f, l if l != f else None, exclude=True) for f, l in self.excludes]
        return PortForward(self.proto, self.address, self.ifname, ranges)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or len(text) > 5:
        raise PortSpecError("Invalid port specifier", whole)
    value = int(text)
    if value > 65535:
        raise PortSpecError("Invalid port specifier", whole)
    return value


def _range(text: str, whole: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    a = _port(first, whole)
    b = _port(last, whole) if sep else a
    if b < a:
        raise PortSpecError("Invalid port specifier", whole)
    return a, b


def _check_prefix(prefix: str, whole: str) -> tuple[str | None, str | None]:
    import ipaddress

    addr, pct, ifname = prefix.partition("%")
    if pct and (not ifname or len(ifname) >= IFNAMSIZ - 1 or "/" in ifname):
        raise PortSpecError("Invalid interface name in port specifier", whole)
    if addr:
        try:
            addr = str(ipaddress.ip_address(addr))
        except ValueError:
            raise PortSpecError("Invalid address in port specifier", whole) from None
    return addr or None, ifname or None


def parse_spec(text: str, proto: str = "tcp", mode: str = "passt") -> PortSpec:
    """Parse one ``-t``/``-u`` argument (passt-reference 3.2) or raise ``PortSpecError``.

    ``mode`` is ``"passt"`` (``all`` allowed) or ``"pasta"`` (``auto`` allowed).
    ``[ADDR][%IF]/all`` is accepted, as current passt and libvirt's ``%eth0/all`` need.
    """
    if proto not in ("tcp", "udp"):
        raise ValueError(f"unknown protocol {proto!r}")
    whole = text
    if text == "none":
        return PortSpec(proto, "none", text=whole)
    if text in ("all", "auto"):
        _keyword_allowed(text, mode, whole)
        return PortSpec(proto, text, text=whole)
    address = ifname = None
    if "/" in text:
        prefix, _, text = text.partition("/")
        address, ifname = _check_prefix(prefix, whole)
        if text in ("all", "auto"):
            _keyword_allowed(text, mode, whole)
            return PortSpec(proto, text, address, ifname, text=whole)
    if not text:
        raise PortSpecError("Invalid port specifier", whole)
    items = text.split(",")
    excludes: list[tuple[int, int]] = []
    forwards: list[tuple[int, int, int]] = []
    # Exclusions first, wherever they appear (as passt does).
    for item in items:
        if item.startswith("~"):
            excludes.append(_range(item[1:], whole))
    for item in items:
        if item.startswith("~"):
            continue
        host, colon, guest = item.partition(":")
        a, b = _range(host, whole)
        if colon:
            c, d = _range(guest, whole)
            if d - c != b - a:
                raise PortSpecError("Invalid port specifier", whole)
        else:
            c = a
        forwards.append((a, b, c))
    _no_overlap(excludes, whole)
    _no_overlap([(a, b) for a, b, _ in forwards], whole)
    return PortSpec(proto, "ports", address, ifname, tuple(forwards), tuple(excludes), whole)


def _keyword_allowed(word: str, mode: str, whole: str) -> None:
    if word == "all" and mode != "passt":
        raise PortSpecError("'all' port forwarding is only allowed for passt", whole)
    if word == "auto" and mode != "pasta":
        raise PortSpecError("'auto' port forwarding is only allowed for pasta", whole)


def _no_overlap(ranges: list[tuple[int, int]], whole: str) -> None:
    ordered = sorted(ranges)
    for (_, last), (first, _) in zip(ordered, ordered[1:]):
        if first <= last:
            raise PortSpecError("Overlapping port specifier", whole)


def parse_specs(texts: list[str], proto: str = "tcp", mode: str = "passt") -> list[PortSpec]:
    """All ``-t`` (or ``-u``) arguments of one command line, with passt's cross-option
    rules: a keyword after another spec conflicts, specific ports cannot follow a
    keyword, and no host port may be forwarded twice."""
    specs: list[PortSpec] = []
    for text in texts:
        spec = parse_spec(text, proto, mode)
        if specs:
            if spec.mode in ("all", "none", "auto") and spec.address is None and spec.ifname is None:
                raise PortSpecError(
                    f"Port forwarding mode '{spec.mode}' conflicts with previous mode", text)
            if any(s.mode in ("all", "none", "auto") and s.address is None and s.ifname is None
                   for s in specs):
                raise PortSpecError(
                    "Specific ports cannot be specified together with all/none/auto", text)
        specs.append(spec)
    seen: set[int] = set()
    for spec in specs:
        ports = set(spec.expand())
        if ports & seen:
            raise PortSpecError("Overlapping port specifier", spec.text)
        seen |= ports
    return specs


def port_map(specs: list[PortSpec]) -> dict[int, int]:
    """Host port -> guest port over several specs of one protocol."""
    out: dict[int, int] = {}
    for spec in specs:
        out.update(spec.expand())
    return out
