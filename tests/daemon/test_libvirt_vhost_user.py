"""The sidecar's default flavour end to end with a real libvirt 11 (bookworm-backports).

The domain is what our sidecar makes of a virt-launcher domain (``domain.on_define_domain``,
flavour ``vhostuser``: ``<interface type="vhostuser"><backend type="passt"/>`` and the
shared memfd ``<memoryBacking>``), plus what a test guest needs to boot (our kernel
and initramfs, a serial console). libvirt then does what it does in a virt-launcher
pod: it starts ``passt`` from its ``PATH`` (here a wrapper running passtcore-run)
with its own argv, and QEMU with the vhost-user netdev on that socket. The guest
gets its lease, pings the gateway, and the forwarded port reaches it.

libvirtd runs inside the sandbox's private host namespace and a private mount
namespace, where a qemu.conf of the test's (QEMU and passt as root: the venv's
interpreter may live under a directory only root can read) is bind-mounted over
the system's; everything it starts is stopped at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from passtcore.kubevirt import domain
from passtcore.sandbox import Sandbox, daemon_binary, stop_process, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

LIBVIRTD = shutil.which("libvirtd")
VIRSH = shutil.which("virsh")
FWD_PORT = 8080

VIRT_LAUNCHER_DOMAIN = b"""<domain type="qemu">
\t<name>default_vmi-passt</name>
\t<memory unit="MiB">256</memory>
\t<os><type arch="x86_64" machine="pc">hvm</type></os>
\t<devices>
\t\t<interface type="ethernet">
\t\t\t<alias name="ua-default"></alias>
\t\t</interface>
\t</devices>
</domain>"""


def libvirt_major() -> int:
    if not LIBVIRTD:
        return 0
    out = subprocess.run([LIBVIRTD, "--version"], capture_output=True, text=True).stdout
    try:
        return int(out.split()[-1].split(".")[0])
    except (IndexError, ValueError):
        return 0


@pytest.fixture
def libvirt(sandbox: Sandbox):
    if libvirt_major() < 11 or not VIRSH:
        pytest.skip("needs libvirt >= 11 (bookworm-backports; scripts/install-system-deps.sh)")
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                         text=True).stdout if shutil.which("qemu-system-x86_64") else ""
    if not any(f"version {n}." in out for n in range(9, 30)):
        pytest.skip("needs QEMU >= 9")
    if os.path.exists("/run/libvirt/libvirt-sock"):
        pytest.skip("a libvirtd is already running on this machine")
    wrap = sandbox.path("bin")
    os.makedirs(wrap)
    with open(os.path.join(wrap, "passt"), "w") as f:
        # as libvirt finds passt in a virt-launcher pod: by name, first in PATH
        f.write(f"#!/bin/sh\necho \"$@\" >> {sandbox.path('passt-argv.log')}\n"
                f"exec {daemon_binary()} --runas 0 \"$@\"\n")
    os.chmod(os.path.join(wrap, "passt"), 0o755)
    conf = sandbox.path("qemu.conf")
    with open(conf, "w") as f:
        f.write('user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n')
    env = dict(os.environ, PATH=wrap + ":" + os.environ["PATH"])
    logd = subprocess.Popen(["virtlogd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {conf} /etc/libvirt/qemu.conf && exec ip netns exec {sandbox.host_ns} "
         f"{LIBVIRTD} --pid-file {sandbox.path('libvirtd.pid')}"],
        env=env, stdout=open(sandbox.path("libvirtd.log"), "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists("/run/libvirt/libvirt-sock"), 30, "libvirtd")
        yield sandbox
    finally:
        subprocess.run([VIRSH, "-c", "qemu:///system", "destroy", "default_vmi-passt"],
                       capture_output=True, timeout=60)
        stop_process(daemon)
        stop_process(logd)
        for stale in ("/run/libvirt/libvirt-sock", "/run/libvirt/libvirt-sock-ro",
                      "/run/libvirt/libvirt-admin-sock"):
            try:
                os.unlink(stale)
            except OSError:
                pass


def test_sidecar_domain_boots_under_libvirt(libvirt: Sandbox) -> None:
    from passtcore.sandbox import guest
    from passtcore.sandbox.guest import Console

    sb = libvirt
    try:
        kernel, initrd = guest.image(log=lambda m: None)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        pytest.skip(f"no guest image: {exc}")
    vmi = {"metadata": {"name": "vmi", "namespace": "default"},
           "spec": {"domain": {"devices": {"interfaces": [
               {"name": "default", "binding": {"name": "passt"}, "ports": [{"port": FWD_PORT}]}]}},
               "networks": [{"name": "default", "pod": {}}]},
           "status": {"interfaces": [{"name": "default", "podInterfaceName": "eth0"}]}}
    xml = domain.on_define_domain(json.dumps(vmi).encode(), VIRT_LAUNCHER_DOMAIN).decode()
    assert "type=\"vhostuser\"" in xml and "memfd" in xml   # the sidecar's default flavour
    # the pod's log directory (/var/run/kubevirt) is the sandbox's here
    xml = xml.replace("/var/run/kubevirt/passt.log", sb.path("passt.log"))
    con = sb.path("console.sock")
    boot = (f"<kernel>{kernel}</kernel><initrd>{initrd}</initrd>"
            "<cmdline>console=ttyS0 panic=-1 quiet</cmdline>")
    xml = xml.replace("</os>", boot + "</os>", 1).replace(
        "</devices>", f"<serial type='unix'><source mode='bind' path='{con}'/>"
                      "<target port='0'/></serial></devices>", 1)
    with open(sb.path("domain.xml"), "w") as f:
        f.write(xml)
    r = subprocess.run([VIRSH, "-c", "qemu:///system", "create", sb.path("domain.xml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr + open(sb.path("libvirtd.log"), errors="replace").read()[-2000:]
    console = Console(con, timeout=30)
    try:
        console.wait_ready(120)
        rc, out = console.run("udhcpc -i eth0 -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script"
                              " && ping -c 2 -W 3 192.0.2.1", 90)
        assert rc == 0 and "2 packets received" in out, out
        # libvirt's own argv for passt: vhost-user, one-off, its socket and pid file, the
        # interface and the ports of the VMI (via the sidecar's <portForward>)
        argv = open(sb.path("passt-argv.log")).read().split()
        assert argv[:2] == ["--vhost-user", "--one-off"] and "--socket" in argv
        assert "--interface" in argv and argv[argv.index("--interface") + 1] == "eth0"
        assert "--tcp-ports" in argv and str(FWD_PORT) in argv[argv.index("--tcp-ports") + 1]
        # the forwarded port reaches the guest
        rc, out = console.run(f"(echo hello-from-guest | nc -l -p {FWD_PORT} &) ; sleep 1")
        got = sb.host(sys.executable, "-c",
                      "import socket\n"
                      f"s=socket.create_connection(('127.0.0.1',{FWD_PORT}),timeout=20)\n"
                      "print(s.recv(100).decode().strip())", timeout=60).stdout.strip()
        assert got == "hello-from-guest"
    finally:
        console.close()
