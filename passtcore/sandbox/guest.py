"""A real Linux guest for QEMU: Debian's cloud kernel and a busybox initramfs.

``image()`` builds (once, cached under ``.cache/guest/`` of the project or
``$PASSTCORE_GUEST_CACHE``) what QEMU boots with ``-kernel``/``-initrd``:

* the kernel of Debian's ``linux-image-cloud-amd64`` (``apt-get download`` and
  ``dpkg-deb -x``: nothing is installed on the host), and its virtio modules
  (``virtio_pci``, ``virtio_net`` and what they need), loaded by ``/init``;
* busybox-static as the userland, a udhcpc script that applies the lease, and
  an ``/init`` that brings ``eth0`` up and runs a shell on the first serial
  port.

``Console`` drives that shell over QEMU's serial chardev (a UNIX socket):
``run(cmd)`` sends one command and returns its output and exit status. The
guest is a real network stack behind a real virtio-net device: DHCP, ARP,
NDP, TCP and UDP all come from its kernel.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "failover", "net_failover", "virtio_net")
META = "linux-image-cloud-amd64"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run /etc
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in %(modules)s; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
ip link set lo up
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
ip link set eth0 up
echo "nameserver 127.0.0.1" > /etc/resolv.conf
echo PASSTCORE-GUEST-READY
stty -F /dev/ttyS0 -echo -icrnl -onlcr 2>/dev/null
# one command per line, no prompt, no line editing, no echo: what Console expects
exec setsid sh -c 'while read -r line; do eval "$line"; done </dev/ttyS0 >/dev/ttyS0 2>&1'
"""

UDHCPC = r"""#!/bin/sh
# udhcpc's lease hook: address, route, resolvers, MTU (busybox udhcpc -s)
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
    echo "lease $ip/$mask router $router dns $dns mtu $mtu" ;;
esac
exit 0
"""


def cache_dir() -> Path:
    env = os.environ.get("PASSTCORE_GUEST_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "guest"


def kernel_package() -> str:
    """The versioned package ``linux-image-cloud-amd64`` depends on."""
    out = subprocess.run(["apt-cache", "depends", META], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise RuntimeError(f"apt-cache depends {META}: no kernel package")
    return m.group(1)


def _cpio(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc cpio archive of ``{path: (mode, data)}`` (directories: data b"")."""
    out = io.BytesIO()
    ino = 1

    def entry(name: str, mode: int, data: bytes) -> None:
        nonlocal ino
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
        ino += 1

    dirs = set()
    for path in files:
        parts = path.split("/")[:-1]
        for k in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:k]))
    for d in sorted(dirs):
        entry(d, 0o040755, b"")
    for path, (mode, data) in sorted(files.items()):
        entry(path, mode, data)
    entry("TRAILER!!!", 0, b"")
    return out.getvalue()


def image(log=print, extra: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(kernel, initramfs) paths, built on first use.

    ``extra`` maps paths in the guest (e.g. ``/usr/bin/iperf3``) to host files to
    add, with their shared libraries (see the module docstring); without it the
    default image."""
    if extra:
        return _image_with_extra(log, extra)
    base = cache_dir()
    kernel, initrd = base / "vmlinuz", base / "initramfs.gz"
    if kernel.exists() and initrd.exists():
        return str(kernel), str(initrd)
    base.mkdir(parents=True, exist_ok=True)
    pkg = kernel_package()
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        log(f"guest image: downloading {pkg}")
        subprocess.run(["apt-get", "download", "-qq", pkg], cwd=tmp, check=True,
                       capture_output=True)
        deb = next(Path(tmp).glob("*.deb"))
        root = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        vmlinuz = next((root / "boot").glob("vmlinuz-*"))
        mods = {}
        for name in MODULES:
            found = list((root / "lib" / "modules").rglob(f"{name}.ko"))
            if found:
                mods[f"lib/modules/{name}.ko"] = (0o100644, found[0].read_bytes())
        busybox = shutil.which("busybox") or "/bin/busybox"
        files = {
            "init": (0o100755, (INIT % {"modules": " ".join(MODULES)}).encode()),
            "bin/busybox": (0o100755, Path(busybox).read_bytes()),
            "usr/share/udhcpc/default.script": (0o100755, UDHCPC.encode()),
            "etc/udhcpc/default.script": (0o100755, UDHCPC.encode()),
            **mods,
        }
        blob = gzip.compress(_cpio(files), compresslevel=6)
        shutil.copyfile(vmlinuz, str(kernel) + ".tmp")
        Path(str(initrd) + ".tmp").write_bytes(blob)
        os.replace(str(kernel) + ".tmp", kernel)
        os.replace(str(initrd) + ".tmp", initrd)
    log(f"guest image: {kernel} ({len(blob) >> 10} KiB initramfs)")
    return str(kernel), str(initrd)


def _shared_libs(exe: str) -> list[str]:
    """The shared objects ``ldd`` lists for ``exe`` (loader included; [] if static)."""
    r = subprocess.run(["ldd", exe], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:  # "not a dynamic executable"
        return []
    libs = []
    for line in r.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(m.group(1))
        elif "=>" in line and "not found" in line:
            raise RuntimeError(f"ldd {exe}: {line.strip()}")
    return libs


def _extra_files(extra: Mapping[str, str]) -> dict[str, tuple[int, bytes]]:
    files: dict[str, tuple[int, bytes]] = {}
    for guest_path, host_path in extra.items():
        files[guest_path.lstrip("/")] = (0o100755, Path(host_path).read_bytes())
        for lib in _shared_libs(host_path):
            files.setdefault(lib.lstrip("/"), (0o100755, Path(os.path.realpath(lib)).read_bytes()))
    return files


def _image_with_extra(log, extra: Mapping[str, str]) -> tuple[str, str]:
    kernel, base_initrd = image(log)
    files = _extra_files(extra)
    base_blob = Path(base_initrd).read_bytes()
    h = hashlib.sha256(base_blob)
    for path, (mode, data) in sorted(files.items()):
        h.update(f"{path}\0{mode:o}\0".encode() + hashlib.sha256(data).digest())
    out = cache_dir() / f"extra-{h.hexdigest()[:16]}"
    initrd = out / "initramfs.gz"
    if initrd.exists():
        return kernel, str(initrd)
    log(f"guest image: adding {', '.join(sorted(extra))} and {len(files) - len(extra)} "
        f"shared libraries")
    out.mkdir(parents=True, exist_ok=True)
    # gzip streams and cpio archives both concatenate: the kernel unpacks one after
    # the other into the same rootfs.
    blob = base_blob + gzip.compress(_cpio(files), compresslevel=6)
    tmp = out / f"initramfs.gz.{os.getpid()}.tmp"   # two builders never share a file
    tmp.write_bytes(blob)
    os.replace(tmp, initrd)
    log(f"guest image: {initrd} ({len(blob) >> 10} KiB initramfs)")
    return kernel, str(initrd)


def connect_unix(path: str, timeout: float) -> socket.socket:
    """A stream socket connected to ``path``, retried until QEMU listens there."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            sock.connect(path)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.05)


def qemu_argv(image: tuple[str, str], console: str, vhost_socket: str | None = None,
              stream_socket: str | None = None, mac: str = "52:54:00:12:34:56",
              device_opts: str = "", mem_mib: int = 256, append: str = "",
              extra: tuple[str, ...] = ()) -> list[str]:
    """QEMU's command line for the image: its shell on the ``console`` socket (QEMU
    the server), one virtio-net NIC on a vhost-user back end (``vhost_socket``;
    guest memory in a shared memfd, which vhost-user needs) or on a stream socket
    (``-netdev stream``), nothing else. TCG: /dev/kvm may exist and still run no
    guest here (PASSTCORE_KVM=1 to use it). ``extra``: e.g. QMP, ``-incoming``."""
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    accel = "kvm" if os.environ.get("PASSTCORE_KVM") == "1" else "tcg"
    if vhost_socket:
        net = ["-chardev", f"socket,id=c0,path={vhost_socket}",
               "-netdev", "vhost-user,id=n0,chardev=c0"]
    else:
        net = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={stream_socket}"]
    kernel, initrd = image
    return [qemu, "-M", f"pc,accel={accel}", "-m", str(mem_mib), "-smp", "1", "-nodefaults",
            "-display", "none", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", f"console=ttyS0 panic=-1 quiet {append}".strip(),
            "-chardev", f"socket,id=con,path={console},server=on,wait=off",
            "-serial", "chardev:con",
            "-object", f"memory-backend-memfd,id=mem,size={mem_mib}M,share=on",
            "-numa", "node,memdev=mem", *net,
            "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile="
                       + (f",{device_opts}" if device_opts else ""), *extra]


class Console:
    """The guest's shell on a serial chardev socket (QEMU is the server)."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.sock = connect_unix(path, timeout)
        self.buf = b""
        self.transcript = bytearray()
        self.seq = 0

    def _read_some(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("guest console: no answer in time; last output: "
                               f"{bytes(self.transcript[-600:])!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        if not data:
            raise EOFError("guest console closed (QEMU exited?)")
        self.buf += data
        self.transcript += data

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            self._read_some(deadline)
        head, _, self.buf = self.buf.partition(marker)
        return head

    def wait_ready(self, timeout: float = 120.0) -> None:
        self._read_until(b"PASSTCORE-GUEST-READY", timeout)

    def run(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run ``cmd`` in the guest's shell: (exit status, output)."""
        if "\n" in cmd or "\r" in cmd:
            # one command per line: a second line would run outside the status
            # marker, and a syntax error there ends the shell (and the guest: it is init)
            raise ValueError("a guest command is one line")
        self.seq += 1
        line = f"{cmd}; echo __PC{self.seq}__$?__END"
        self.sock.sendall(line.encode() + b"\n")
        # the marker as printed, not as typed (a tty that echoes shows "$?")
        pat = re.compile(rb"__PC%d__(-?\d+)__END" % self.seq)
        deadline = time.monotonic() + timeout
        while True:
            m = pat.search(self.buf)
            if m:
                break
            self._read_some(deadline)
        out = self.buf[:m.start()].decode(errors="replace").replace("\r", "")
        self.buf = self.buf[m.end():]
        if out.startswith(line):
            out = out[len(line):].lstrip("\n")
        return int(m.group(1)), out

    def close(self) -> None:
        self.sock.close()
