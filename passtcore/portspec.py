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
