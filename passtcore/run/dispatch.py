"""Route guest frames to the protocol engines; count and drop everything else.

Routing (passt-reference 1.1, 5.6): ARP -> arp; IPv4 UDP dport 67 -> dhcp;
ICMPv6 133 (RS) / 135 (NS) -> ndp; IPv6 UDP dport 547 -> dhcpv6; ICMP/ICMPv6
echo requests -> icmp; TCP -> tcp; other UDP -> udp. Anything else is dropped
and counted by a short reason. Frames are parsed once with the shared kernel
(``passtcore.headers.parse_frame``), which also accepts Ethernet padding.

Engines are optional and loaded lazily: a module that does not exist yet, or
does not import, makes its traffic count as ``no-engine-<name>``, so the
daemon works at every stage of the project. An engine module exposes one of
(first match wins): ``create(ctx)``, ``make_engine(ctx)``, a class ``Engine``,
or a class named ``<Name>Engine`` in any letter case (``ArpEngine``,
``DHCPv6Engine``...); that is called with the Context.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any

from passtcore.run.context import Context

log = logging.getLogger("passtcore.run")

ENGINES = ("arp", "dhcp", "ndp", "dhcpv6", "icmp", "tcp", "udp")
# Option switches that silence a service (requests are swallowed, not forwarded).
_DISABLED_BY = {"dhcp": "no_dhcp", "ndp": "no_ndp", "dhcpv6": "no_dhcpv6",
                "icmp": "no_icmp", "tcp": "no_tcp", "udp": "no_udp"}
_MISSING = object()


def is_fatal(exc: BaseException) -> bool:
    """Engine errors that are configuration errors (fwd.ForwardError, or ``.fatal``)."""
    return bool(getattr(exc, "fatal", False)) or type(exc).__name__ in ("ForwardError",
                                                                         "FatalError")


def load_engine(name: str, ctx: Context, package: str = "passtcore.run") -> Any:
    """Build engine ``name`` for ``ctx``; None if its module is absent or broken."""
    try:
        mod = importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{package}.{name}":
            return None
        log.warning("engine %s: import failed: %s", name, exc)
        return None
    except Exception as exc:  # an engine under construction must not take the daemon down
        log.warning("engine %s: import failed: %r", name, exc)
        return None
    factory = getattr(mod, "create", None) or getattr(mod, "make_engine", None) \
        or getattr(mod, "Engine", None)
    if factory is None:
        wanted = name.lower() + "engine"
        factory = next((getattr(mod, attr) for attr in dir(mod)
                        if attr.lower() == wanted and callable(getattr(mod, attr))), None)
    if factory is None:
        log.warning("engine %s: module has no create()/Engine class", name)
        return None
    try:
        return factory(ctx)
    except Exception as exc:
        if is_fatal(exc):
            raise  # e.g. "Failed to bind any port": a configuration error, exit 1
        log.warning("engine %s: construction failed: %r", name, exc)
        return None


class Dispatcher:
    """``handle(frame)`` for every frame from the guest."""

    def __init__(self, ctx: Context, package: str = "passtcore.run") -> None:
        self.ctx = ctx
        self.package = package
        self._engines: dict[str, Any] = {}
        self._parse: Any = None
        self._parse_error: type[Exception] = ValueError
        self.trace = False

    def _parser(self) -> Any:
        if self._parse is None:
            try:
                from passtcore import headers
            except Exception as exc:  # some kernel missing: the pure parser alone will do
                log.warning("kernels unavailable (%r); trying passtcore_py.headers", exc)
                try:
                    headers = importlib.import_module("passtcore_py.headers")
                except Exception as exc2:
                    log.warning("no frame parser (%r): guest frames are dropped", exc2)
                    self._parse = False
                    return False
            self._parse = headers.parse_frame
            self._parse_error = headers.ParseError
        return self._parse

    def engine(self, name: str) -> Any:
        eng = self._engines.get(name, _MISSING)
        if eng is _MISSING:
            eng = load_engine(name, self.ctx, self.package)
            self._engines[name] = eng
            if eng is not None:
                self.ctx.engines[name] = eng
        return eng

    def load_all(self) -> None:
        """Build every engine now (before forking / dropping privileges)."""
        conf = self.ctx.conf
        for name in ENGINES:
            if not getattr(conf, _DISABLED_BY.get(name, ""), False):
                self.engine(name)

    def route(self, info: Any) -> str:
        """The engine name for a parsed frame, or ``"drop:<reason>"``."""
        et = info.ethertype
        if info.vlan >= 0 or et in (0x8100, 0x88A8):
            return "drop:vlan"  # passt serves untagged frames only
        if et == 0x0806:
            return "arp"
        if et not in (0x0800, 0x86DD):
            return f"drop:ethertype-0x{et:04x}"
        if info.is_fragment:
            return "drop:ip-fragment"
        proto = info.l4_proto
        v6 = info.ip_version == 6
        if proto == 6:
            return "tcp"
        if proto == 17:
            if not v6 and info.dport == 67:
                return "dhcp"
            if v6 and info.dport == 547:
                return "dhcpv6"
            return "udp"
        if proto == 1 and not v6:
            return "icmp" if info.icmp_type == 8 else f"drop:icmp-type-{info.icmp_type}"
        if proto == 58 and v6:
            t = info.icmp_type
            if t in (133, 135):
                return "ndp"
            if t == 128:
                return "icmp"
            if t in (134, 136):
                return "drop:ndp-ignored"
            return f"drop:icmpv6-type-{t}"
        return f"drop:ip-proto-{proto}"

    def handle(self, frame: memoryview) -> None:
        ctx = self.ctx
        if len(frame) >= 12 and not frame[6] & 1:
            ctx.guest_mac = bytes(frame[6:12])
        parse = self._parse if self._parse is not None else self._parser()
        if not parse:
            ctx.counters.drop("no-parser")
            return
        try:
            info = parse(frame)
        except self._parse_error as exc:
            ctx.counters.drop(getattr(exc, "reason", "parse-error") or "parse-error")
            return
        except Exception:  # a kernel bug must not kill the daemon
            ctx.counters.drop("parse-crash")
            log.debug("parser raised on a %d-byte frame", len(frame), exc_info=True)
            return
        if info.ip_version:
            ctx.learn(info)
        target = self.route(info)
        if self.trace:
            log.log(5, "guest frame: %d bytes, ethertype 0x%04x, proto %d -> %s",
                    len(frame), info.ethertype, info.l4_proto if info.ip_version else -1, target)
        if target.startswith("drop:"):
            ctx.counters.drop(target[5:])
            return
        switch = _DISABLED_BY.get(target)
        if switch and getattr(ctx.conf, switch, False):
            ctx.counters.drop(f"disabled-{target}")
            return
        eng = self.engine(target)
        if eng is None:
            ctx.counters.drop(f"no-engine-{target}")
            return
        try:
            eng.handle(frame, info)
        except Exception:
            reason = f"engine-error-{target}"
            ctx.counters.drop(reason)
            n = ctx.counters.get("drop." + reason)
            if n <= 10 or n % 1000 == 0:  # a broken engine must not flood the log
                log.warning("engine %s failed on a frame (%d so far)", target, n,
                            exc_info=True)

    def tick(self, now: float) -> None:
        for name, eng in list(self._engines.items()):
            fn = getattr(eng, "tick", None) if eng is not None else None
            if fn is not None:
                try:
                    fn(now)
                except Exception:
                    log.warning("engine %s: tick failed", name, exc_info=True)

    def close(self) -> None:
        for eng in self._engines.values():
            fn = getattr(eng, "close", None) if eng is not None else None
            if fn is not None:
                try:
                    fn()
                except Exception:
                    log.debug("engine close failed", exc_info=True)
