"""Real QEMU guests for the vhost-user and migration tests: the image (Debian's
cloud kernel and a busybox initramfs, ``passtcore.sandbox.guest``) and QEMU's
command line, with guest memory in a shared memfd (vhost-user needs it)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from passtcore.sandbox import Sandbox, stop_process

QEMU = shutil.which("qemu-system-x86_64")
NO_OFFLOADS = ",".join(f"{f}=off" for f in ("csum", "guest_csum", "guest_tso4", "guest_tso6",
                                             "host_tso4", "host_tso6", "guest_ecn", "host_ecn",
                                             "guest_ufo", "host_ufo", "mrg_rxbuf"))


def qemu_major() -> int:
    if QEMU is None:
        return 0
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)", out)
    return int(m.group(1)) if m else 0


def guest_image() -> tuple[str, str]:
    """(kernel, initramfs), or the test is skipped."""
    if qemu_major() < 9:
        pytest.skip("vhost-user under TCG needs QEMU >= 9 (scripts/install-system-deps.sh "
                    "installs 10 from bookworm-backports); Debian 12's 7.2 crashes here")
    from passtcore.sandbox import guest
    # the host's iperf3 (UDP both ways) and ISC dhclient (a real DHCPv6 client),
    # with their shared libraries, on top of the busybox image
    extra = {p: p for p in (shutil.which("iperf3"), shutil.which("dhclient")) if p}
    try:
        return guest.image(log=lambda m: None, extra=extra)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        pytest.skip(f"no guest image: {exc}")


def start_qemu(sb: Sandbox, image: tuple[str, str], sock: str, name: str,
               mac: str = "52:54:00:12:34:56", device_opts: str = "",
               extra: tuple[str, ...] = ()) -> subprocess.Popen[Any]:
    """QEMU with a vhost-user NIC on ``sock``; its console on ``sb.path(f"console-{name}")``
    (``extra``: e.g. a QMP socket, ``-incoming``)."""
    from passtcore.sandbox.guest import qemu_argv

    argv = qemu_argv(image, sb.path(f"console-{name}"), vhost_socket=sock, mac=mac,
                     device_opts=device_opts, extra=extra)
    return sb.popen_host(*argv, stdout=open(sb.path(f"qemu-{name}.log"), "ab"),
                         stderr=subprocess.STDOUT)


def boot(sb: Sandbox, image: tuple[str, str], sock: str, mac: str = "52:54:00:12:34:56",
         device_opts: str = "", extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[Any], Any]:
    """A booted guest: (QEMU, its console, ready for commands)."""
    from passtcore.sandbox.guest import Console

    name = os.path.basename(sock)
    q = start_qemu(sb, image, sock, name, mac, device_opts, extra)
    try:
        console = Console(sb.path(f"console-{name}"), timeout=30)
        console.wait_ready(120)
    except Exception:
        stop_process(q)
        raise
    return q, console
