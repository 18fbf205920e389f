"""The daemon proper, after the early bind: set-up, fork, serve, clean exit.

Order (passt-reference 2.4, 9.3): logging (the log file is opened first so
that later failures are recorded), host configuration, pcap and pid files,
front end (tap opened inside the target namespace), engines (forwarded ports
bound), drop to ``--runas`` (root defaults to nobody), fork. Everything that
can fail raises ``FatalError`` before the fork, so libvirt sees exit 1 with
one line on stderr. Signals: SIGTERM/SIGQUIT stop the loop (exit 0), SIGUSR1
logs the counters; the counters are also logged at exit.
"""
from __future__ import annotations

# ctypes is imported here, not in harden(): after --runas drops to nobody the
# standard library may no longer be readable (an interpreter under /root).
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Any

from passtcore.run.process import options as _options
from passtcore.run.counters import Counters

log = logging.getLogger("passtcore.run")


class FatalError(Exception):
    """Set-up failure: one-line message, exit 1, before forking."""


def _resolve_runas(opts: Any) -> tuple[int, int] | None:
    if opts.runas is not None:
        return opts.runas
    if os.geteuid() != 0:
        return None
    try:
        with open("/proc/self/uid_map") as f:
            identity = f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        identity = True
    if not identity:
        return None
    import pwd

    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


def drop_privileges(ids: tuple[int, int] | None) -> None:
    if ids is None:
        return
    uid, gid = ids
    if (uid, gid) == (os.geteuid(), os.getegid()):
        return
    if uid != 0 and os.geteuid() == 0:
        log.info("Don't run as root. Changing to %d:%d...", uid, gid)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def log_counters(counters: Counters, handler: logging.Handler | None) -> None:
    """Written whatever the log level (-q included): tests and operators read it."""
    record = logging.LogRecord("passtcore.run", logging.INFO, __file__, 0, counters.format(),
                               None, None)
    if handler is not None:
        handler.handle(record)


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit, as passt (``-t all`` needs ~50k fds)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def harden() -> None:
    """The cheap part of passt's isolate_postfork: not dumpable, no new privileges.
    (User/mount namespaces, pivot_root and seccomp are not done yet: issue 12.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def daemonise(pid_fd: int | None) -> None:
    """fork(); the parent writes the child's PID and exits 0; the child detaches."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        if pid_fd is not None:
            os.write(pid_fd, f"{pid}\n".encode())
            os.close(pid_fd)
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def run(opts: Any, early: tuple[Any, str] | None) -> int:
    from passtcore.run.process import helper

    # The helper first: it serves the host query (without iproute2) and the tap
    # set-up in the target namespace, then ends.
    from passtcore.run.process import iproute

    # With iproute2 the helper only forks (setns, the tap); without it, it imports
    # pyroute2 at once, while we import the engines and kernels.
    helper.start(() if iproute.ip_binary() else ("pyroute2",))
    try:
        return _run(opts, early)
    finally:
        helper.stop()


def _run(opts: Any, early: tuple[Any, str] | None) -> int:
    from passtcore.run.io.loop import Loop
    from passtcore.run.io.pcap import PcapWriter
    from passtcore.run.process import config as _conf
    from passtcore.run.process import helper, logsink

    # The engines and kernels are imported once the front end is up: a namespace
    # guest gets its addresses and routes (and queues its first frames in the
    # tap) while we import them.
    try:
        handler = logsink.setup(opts, _options.VERSION)
    except OSError as exc:
        raise FatalError(f"-l/--log-file: can't open {opts.log_file}: {exc.strerror}") from None
    try:
        cfg = _conf.build(opts)
    except _conf.ConfError as exc:
        raise FatalError(str(exc)) from None
    except OSError as exc:
        raise FatalError(f"netlink: {exc}") from None
    for w in cfg.warnings:
        log.warning("%s", w)

    if not opts.quiet:
        for line in cfg.describe():
            log.info("%s", line)

    counters = Counters()
    loop = Loop()
    pcap = None
    if opts.pcap:
        try:
            pcap = PcapWriter(opts.pcap)
        except OSError as exc:
            raise FatalError(f"-p/--pcap: can't open {opts.pcap}: {exc.strerror}") from None
        log.info("Saving packet capture to %s", opts.pcap)
    pid_fd = None
    if opts.pid_file:
        try:
            pid_fd = os.open(opts.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                             0o600)
        except OSError as exc:
            raise FatalError(f"-P/--pid: can't open {opts.pid_file}: {exc.strerror}") from None

    raise_nofile()
    frontend = _make_frontend(opts, cfg, early, loop, counters)
    helper.stop()  # netlink work is done: the helper (and pyroute2) go before we serve
    import passtcore
    from passtcore.run.context import Context
    from passtcore.run.dispatch import Dispatcher

    passtcore.headers.parse_frame  # noqa: B018 - the packet kernels load now, before --runas
    ctx = Context(cfg, loop, counters, pcap, opts)
    dispatcher = Dispatcher(ctx)  # loads the packet kernels now, before --runas
    dispatcher.trace = opts.trace
    frontend.on_batch = dispatcher.handle_batch
    ctx.frontend = frontend
    try:
        dispatcher.load_all()
    except Exception as exc:  # e.g. "Failed to bind any port": exit 1 with the message
        raise FatalError(str(exc)) from None
    from passtcore.run import autofwd

    try:  # -t auto / -u auto: the namespace's /proc/net files, opened before --runas
        autofwd.from_options(opts, loop, dispatcher.engines)
    except OSError as exc:
        raise FatalError(f"-t/-u auto: can't watch the ports of {opts.netns}: "
                         f"{exc.strerror or exc}") from None

    if opts.vhost_user:
        # live migration: the repair helper's socket is bound now, before isolation
        from passtcore.run.migrate.device import DeviceState

        # --repair-path none: no helper; the default (<socket>.repair) is given up
        # with a warning when it cannot be bound (too long for a UNIX socket), as passt
        explicit = opts.repair_path not in (None, "none")
        repair = (opts.repair_path if explicit else None if opts.repair_path == "none"
                  else f"{early[1]}.repair" if early is not None else None)
        try:
            frontend.device_state = DeviceState(ctx, repair, no_linger=opts.migrate_no_linger)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if explicit:
                raise FatalError(f"--repair-path: can't bind {repair}: {why}") from None
            log.warning("passt-repair path %s not usable (%s): TCP connections will not "
                        "survive a migration", repair, why)
            frontend.device_state = DeviceState(ctx, None, no_linger=opts.migrate_no_linger)
        frontend.on_rings_started = frontend.device_state.rings_started
        frontend.migrate_exit = opts.migrate_exit
    watch = _netns_watch(opts)   # before --runas and isolation (see _netns_watch)
    isolation = os.environ.get("PASSTCORE_NO_ISOLATION") != "1"
    if isolation:   # modules, libseccomp: read while the files are still readable
        from passtcore.run.process import isolate

        isolate.prepare(keep_filesystem=bool(opts.namespace_mode))
    ids = _resolve_runas(opts)
    if early is not None and ids is not None:
        try:
            os.chown(early[1], ids[0], ids[1])
        except OSError:
            pass
    try:
        drop_privileges(ids)
    except OSError as exc:
        raise FatalError(f"--runas: can't change identity: {exc.strerror}") from None

    if not opts.foreground:
        daemonise(pid_fd)
        handler.rewrite_header()
    elif pid_fd is not None:
        os.write(pid_fd, f"{os.getpid()}\n".encode())
        os.close(pid_fd)
    handler.daemonised(opts.stderr, opts.foreground)
    if not isolation:
        harden()
        log.warning("isolation off (PASSTCORE_NO_ISOLATION=1): no namespaces, empty root "
                    "or seccomp")
    else:
        done = isolate.isolate(keep_filesystem=bool(opts.namespace_mode))
        log.info("isolation: %s", ", ".join(f"{k} {v}" for k, v in done.items()))
        for kind in filter(None, os.environ.get("PASSTCORE_ISOLATION_PROBE", "").split(",")):
            log.info("isolation probe %s", isolate.probe(kind))
    try:
        return _serve(opts, loop, counters, handler, dispatcher, frontend, pcap, watch)
    except Exception as exc:  # after the fork nobody sees stderr: log it
        log.error("fatal: %r", exc, exc_info=True)
        return 1


def _netns_watch(opts: Any) -> int | None:
    """A pidfd of the target process when the namespace is a PID's (``/proc/PID/ns/net``):
    its /proc entries are out of reach once we hold no capabilities (ptrace access
    rules), and a pidfd says when the process ends without them. None otherwise:
    a namespace file (``/run/netns/NAME``) is watched by its path."""
    import re

    m = re.fullmatch(r"/proc/(\d+)/ns/net", str(opts.netns or ""))
    if not (opts.namespace_mode and not opts.no_netns_quit and m):
        return None
    try:
        return os.pidfd_open(int(m.group(1)))
    except (OSError, AttributeError):
        return None


def _serve(opts: Any, loop: Any, counters: Counters, handler: Any, dispatcher: Any,
           frontend: Any, pcap: Any, watch: int | None = None) -> int:

    def terminate(signum: int) -> None:
        log.info("Received signal %d, exiting", signum)
        loop.stop(0)

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGQUIT, terminate)
    loop.add_signal_handler(signal.SIGINT, terminate)
    loop.add_signal_handler(signal.SIGUSR1, lambda _s: log_counters(counters, handler))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    def on_error(exc: BaseException, cb: Any) -> None:
        counters.inc("loop-callback-error")
        log.error("callback %r failed: %r", getattr(cb, "__qualname__", cb), exc,
                  exc_info=opts.debug)

    loop.on_error = on_error
    if watch is not None:
        # Like pasta: quit when the target process goes away (its pidfd turns readable).
        def target_gone() -> None:
            log.info("Namespace %s is gone, exiting", opts.netns)
            loop.remove_reader(watch)
            loop.stop(0)

        loop.add_reader(watch, target_gone)
    elif opts.namespace_mode and not opts.no_netns_quit:
        # Like pasta: quit when the namespace file goes away.
        def watch_netns() -> None:
            if not os.path.exists(opts.netns):
                log.info("Namespace %s is gone, exiting", opts.netns)
                loop.stop(0)

        loop.call_every(1.0, watch_netns)
    loop.call_every(1.0, lambda: dispatcher.tick(loop.now()))
    frontend.start()
    # Unconditional (even with -q): harnesses wait for it before signalling us.
    handler.handle(logging.LogRecord("passtcore.run", logging.INFO, __file__, 0,
                                     "ready: serving", None, None))
    code = 0
    try:
        code = loop.run()
    finally:
        log_counters(counters, handler)
        dispatcher.close()
        frontend.close()
        if pcap is not None:
            pcap.close()
    return code


def _make_frontend(opts: Any, cfg: Any, early: tuple[Any, str] | None, loop: Any,
                   counters: Counters) -> Any:
    from passtcore.run.io.stream import StreamFrontend
    from passtcore.run.io.tap import TapFrontend, open_tap

    if opts.fd is not None:
        try:
            return StreamFrontend.from_fd(opts.fd, loop, counters)
        except OSError as exc:
            raise FatalError(f"-F/--fd: {exc.strerror or exc}") from None
    if opts.namespace_mode:
        from passtcore import netns as _netns

        if opts.userns:
            # pasta: join the user namespace before the netns; only a single-threaded
            # process can, so this comes before any thread (the tap's) is started.
            try:
                if _netns.join_userns(opts.userns):
                    log.info("Joined user namespace %s", opts.userns)
            except OSError as exc:
                raise FatalError(f"--userns: can't join {opts.userns}: "
                                 f"{exc.strerror or exc}") from None
        ifname = opts.ns_ifname or cfg.ifname4 or cfg.ifname6 or "tap0"
        from passtcore.run.process.helper import run_in_child

        try:
            fd, offload = _netns.call_in(opts.netns,
                                         lambda: open_tap(ifname, not opts.no_tap_offload),
                                         what="opening the tap")
        except OSError as exc:
            raise FatalError(f"--netns: can't open tap {ifname} in {opts.netns}: "
                             f"{exc.strerror or exc}") from None
        try:
            # netlink in a forked helper: pyroute2 never loads in the daemon itself.
            run_in_child(_configure_tap, opts.netns, ifname, opts.ns_mac_addr,
                         opts.config_net, cfg)
        except Exception as exc:
            os.close(fd)
            raise FatalError(f"--netns: can't configure tap {ifname} in {opts.netns}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        log.info("Serving tap %s in namespace %s", ifname, opts.netns)
        # -T/-U: namespace loopback -> host loopback (io/splice.py); binds in the netns,
        # so before the privilege drop; closed at exit.
        import atexit

        from passtcore.run.io import splice

        try:
            fwd = splice.from_options(loop, counters, opts, runas=_resolve_runas(opts))
        except (splice.SpliceError, OSError) as exc:
            os.close(fd)
            raise FatalError(str(exc)) from None
        if fwd is not None:
            atexit.register(fwd.close)
        log.info("tap %s: %s", ifname, "checksum and TSO offloads on" if offload
                 else "no offloads (plain frames)")
        return TapFrontend(fd, loop, counters, offload=offload)
    assert early is not None
    sock = socket.socket(fileno=early[0].detach())
    log.info("UNIX domain socket bound at %s", early[1])
    if opts.vhost_user:
        from passtcore.run.io.vhost_user import VhostUserFrontend

        if not opts.quiet:
            log.info("You can now start qemu with a shared memory backend:")
            log.info("    kvm ... -object memory-backend-memfd,id=m,size=<RAM>,share=on "
                     "-numa node,memdev=m -chardev socket,id=c,path=%s "
                     "-netdev vhost-user,id=n,chardev=c -device virtio-net-pci,netdev=n",
                     early[1])
        return VhostUserFrontend(loop, counters, listener=sock, one_off=opts.one_off)
    if not opts.quiet:
        log.info("You can now start qemu (>= 7.2, with commit 13c6be96618c):")
        log.info("    kvm ... -device virtio-net-pci,netdev=s -netdev stream,id=s,server=off,"
                 "addr.type=unix,addr.path=%s", early[1])
    return StreamFrontend(loop, counters, listener=sock, one_off=opts.one_off)


def _no_dad(ifname: str) -> None:
    """Like pasta: no DAD on the tap, the address is ours by construction."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/accept_dad", "w") as f:
            f.write("0")
    except OSError:
        pass


def _configure_tap(netns_path: str, ifname: str, mac: bytes | None, config_net: bool,
                   cfg: Any) -> None:
    """In a forked, single-threaded helper: enter the target netns, set the tap's MAC,
    bring lo and the tap up and, with --config-net, set MTU, addresses and routes:
    one ``ip -batch`` (iproute.py), or pyroute2 where there is no ``ip``."""
    import ipaddress

    from passtcore import netns
    from passtcore.run.process import iproute

    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    netns.setns(nsfd)
    os.close(nsfd)
    ip = iproute.ip_binary()
    if ip is not None:
        if config_net and cfg.v6:
            _no_dad(ifname)
        iproute.apply(ip, iproute.tap_script(ifname, mac, config_net, cfg))
        return

    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        if mac:
            ipr.link("set", index=idx, address=":".join(f"{b:02x}" for b in mac))
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")
        if config_net:
            if cfg.mtu:
                ipr.link("set", index=idx, mtu=cfg.mtu)
            if cfg.v6:
                _no_dad(ifname)
        ipr.link("set", index=idx, state="up")
        if config_net:
            if cfg.v4:
                ipr.addr("add", index=idx, address=str(ipaddress.ip_address(cfg.addr4)),
                         prefixlen=cfg.prefix4)
                ipr.route("add", dst="0.0.0.0/0", gateway=str(ipaddress.ip_address(cfg.gw4)),
                          oif=idx)
            if cfg.v6:
                ipr.addr("add", index=idx, address=str(ipaddress.ip_address(cfg.addr6)),
                         prefixlen=cfg.prefix6, flags=0x02)  # IFA_F_NODAD
                ipr.route("add", dst="::/0", family=socket.AF_INET6,
                          gateway=str(ipaddress.ip_address(cfg.gw6_ll)), oif=idx)
