"""Runs ``passtcore.run.io.splice`` alone on a daemon ``Loop``, as the daemon does it
(options parsed by the real parser, the same privilege drop), without the tap
and the engines: ``python splice_driver.py --netns PATH -T SPEC ...``.

Environment: ``SPLICE_UDP_TIMEOUT`` (seconds), ``SPLICE_OWN_LISTEN=PORT`` (the
driver itself listens on host 127.0.0.1:PORT: ``auto`` must leave it out).
Prints ``ready``, a ``counters:`` line on SIGUSR1 and at exit (SIGTERM).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys

from passtcore.run.counters import Counters
from passtcore.run.io import splice
from passtcore.run.io.loop import Loop
from passtcore.run.process import options
from passtcore.run.process.daemon import _resolve_runas, drop_privileges


def main() -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(relativeCreated)d %(levelname)s %(message)s")
    opts = options.parse(sys.argv[1:])
    loop = Loop()
    counters = Counters()
    own = None
    if os.environ.get("SPLICE_OWN_LISTEN"):
        own = socket.socket()
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.bind(("127.0.0.1", int(os.environ["SPLICE_OWN_LISTEN"])))
        own.listen()
    if os.environ.get("SPLICE_UDP_TIMEOUT"):
        splice.UDP_TIMEOUT = float(os.environ["SPLICE_UDP_TIMEOUT"])
    ids = _resolve_runas(opts)
    tcp = [] if opts.no_tcp else opts.tcp_ns
    udp = [] if opts.no_udp else opts.udp_ns
    fwd = splice.SpliceForwarder(loop, counters, opts.netns, tcp, udp,
                                 v4=not opts.ipv6_only, v6=not opts.ipv4_only, runas=ids,
                                 udp_timeout=splice.UDP_TIMEOUT)
    drop_privileges(ids)
    loop.add_signal_handler(signal.SIGTERM, lambda _s: loop.stop(0))
    loop.add_signal_handler(signal.SIGUSR1, lambda _s: print(counters.format(), flush=True))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    print(f"ready uid={os.geteuid()}", flush=True)
    try:
        loop.run()
    finally:
        fwd.close()
        print(counters.format(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
