"""The sidecar's domain under a real libvirt 11.3 and QEMU 10: both flavours, passt as uid 107.

For each flavour of ``domain.on_define_domain`` (``vhostuser``, KubeVirt v1.6+:
``<interface type="vhostuser"><backend type="passt"/>`` and the shared memfd
``<memoryBacking>``; ``stream``, pre-v1.6: ``<interface type="user">``) the domain is what
the sidecar makes of a virt-launcher domain, plus what a test guest needs to boot (our
kernel and initramfs, a serial console). libvirt does what it does in a virt-launcher pod:
it looks ``passt`` up by name in its ``PATH`` and runs it with its own argv
(``qemuPasstBuildCommand``, src/qemu/qemu_passt.c: ``--vhost-user`` for a vhostuser
interface only, then ``--one-off --socket <passtStateDir>/<id>-<name>-<alias>.socket --pid
<...>-passt.pid``, ``--interface`` from ``<source dev>``, ``--log-file`` from the backend, one
``--tcp-ports``/``--udp-ports`` per ``<portForward>``; no ``--mac-addr`` in 11.x), waits
for it to exit 0 and starts QEMU on that socket (vhost-user chardev, or ``-netdev
stream``). The test asserts that argv exactly; that the process named by the pid file
libvirt passed with ``--pid`` runs as 107:107 with no capabilities (``/proc/PID/status``),
has libvirt's argv as the tail of its cmdline and owns the socket; that QEMU runs as 107;
that the guest gets its lease, pings the gateway and answers on the forwarded port; that
this PID's counters (SIGUSR1) hold the guest's frames and echo replies; and that passt
is gone after ``virsh destroy``.

How 107 is reached, both ways virt-launcher runs libvirt (fixture parameter):

* ``system`` (a root VMI): libvirtd as root, with virt-launcher's ``qemu.conf`` verbatim
  (kubevirt cmd/virt-launcher/qemu.conf: ``user``/``group`` ``qemu``,
  ``dynamic_ownership = 1``, ``remember_owner = 0``, ``namespaces = [ ]``,
  ``cgroup_controllers = [ ]``, ``stdio_handler = "logd"``): libvirt runs passt
  (``qemuSecurityCommandRun``, capabilities cleared) and QEMU with the qemu user's DAC label.
* ``session`` (a non-root VMI, KubeVirt's default): the daemon itself runs as 107 on
  ``qemu:///session`` with CAP_NET_BIND_SERVICE ambient, as virt-launcher starts virtqemud
  (``libvirt_helper.go``), ``qemu.conf`` in its private config directory
  (``XDG_CONFIG_HOME``/``XDG_CACHE_HOME``, like /var/run/kubevirt-private). This machine has
  the monolithic libvirtd, not virtqemud: the same QEMU driver code.

virt-launcher's image has the account ``qemu:x:107:107``; this machine has none, so
libvirtd's mount namespace gets copies of /etc/passwd and /etc/group with it. The
``passt`` on ``PATH`` is the shipped ``deploy/virt-launcher/passt``, behind a shim that
records its argv and sets ``PASSTCORE_PYTHON`` to this venv's interpreter. The pod's network
namespace is prepared by the real CNI plugin: the sandbox's host namespace gets the kernel
defaults back (no ping group, unprivileged ports from 1024), then ``kubevirt-passt-binding
ADD`` sets ``ping_group_range = "107 107"`` and ``ip_unprivileged_port_start = 0``, so the
guest's ping can only work through a gid-107 passt.

The venv's interpreter lives under ``/root`` (mode 0700), which 107 may not search. Nothing
on the machine is changed for that: in libvirtd's mount namespace each directory on the
interpreter's, the venv's and the checkout's paths that 107 cannot search is covered by a
root-owned 0711 stand-in holding bind mounts of just the entries on those paths (here
``/root`` -> ``.pyenv``). 107 can then reach the interpreter and nothing else of /root, as
with ``/opt/passtcore`` in the image; interpreter, stdlib, venv and checkout are the real
ones at their real paths. (Copying the interpreter, or a system Python with the venv's
site-packages, would test something else than what runs.)

Isolation and bounds: libvirtd and virtlogd run in a private mount namespace
(propagation private) and libvirtd in the sandbox's private host network namespace (no
traffic can leave). In ``system`` mode ``/run/libvirt``, ``/var/lib/libvirt``,
``/var/cache/libvirt``, ``/var/log/libvirt`` are fresh sandbox directories there (libvirt
chowns its state directories to the qemu user: the machine's stay untouched) and
``/etc/libvirt/qemu.conf`` is the test's; in ``session`` mode everything is under the
sandbox's XDG directories. virsh reaches the daemon through ``?socket=``. ``/dev/kvm`` is a
plain root-only file there, as in a pod with software emulation (the domain is TCG):
libvirt probes QEMU with CAP_DAC_OVERRIDE but checks /dev/kvm as the qemu user, and with
this machine's root-only /dev/kvm it re-probed QEMU on every capabilities lookup (~50 s per
boot). The kernel and initramfs are copied into the sandbox (dynamic ownership relabels
what the domain names). Every wait has a timeout; teardown, also on failure: ``virsh
destroy``, libvirtd and virtlogd stopped by PID, any process left in their mount
namespace (passt, QEMU) stopped by PID, sockets removed, then the sandbox goes.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from passtcore.kubevirt import domain
from passtcore.sandbox import Daemon, Sandbox, stop_process, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

LIBVIRTD = shutil.which("libvirtd")
VIRTLOGD = shutil.which("virtlogd")
VIRSH = shutil.which("virsh")
REPO = Path(__file__).resolve().parents[2]
PASST_WRAPPER = REPO / "deploy" / "virt-launcher" / "passt"
CNI_PLUGIN = Path(sys.executable).parent / "kubevirt-passt-binding"
QEMU_UID = QEMU_GID = 107  # virt-launcher's "qemu" user
MODES = ("system", "session")
DOMAIN_NAME = "default_vmi-passt"
TCP_PORT, UDP_PORT = 8080, 8081
# libvirt's state dirs, each replaced by a sandbox directory in libvirtd's mount namespace
STATE_DIRS = {"run": "/run/libvirt", "lib": "/var/lib/libvirt", "cache": "/var/cache/libvirt",
              "log": "/var/log/libvirt"}
# kubevirt cmd/virt-launcher/qemu.conf, verbatim
QEMU_CONF = """stdio_handler = "logd"
spice_listen = "0.0.0.0"
vnc_listen = "0.0.0.0"
vnc_tls = 0
vnc_sasl = 0
user = "qemu"
group = "qemu"
dynamic_ownership = 1
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
"""

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

VMI = {"metadata": {"name": "vmi", "namespace": "default"},
       "spec": {"domain": {"devices": {"interfaces": [
           {"name": "default", "binding": {"name": "passt"},
            "ports": [{"port": TCP_PORT}, {"port": UDP_PORT, "protocol": "UDP"}]}]}},
           "networks": [{"name": "default", "pod": {}}]},
       "status": {"interfaces": [{"name": "default", "podInterfaceName": "eth0"}]}}


def libvirt_major() -> int:
    if not LIBVIRTD:
        return 0
    out = subprocess.run([LIBVIRTD, "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    try:
        return int(out.split()[-1].split(".")[0])
    except (IndexError, ValueError):
        return 0


def unsearchable(path: str, uid: int, gid: int) -> list[tuple[str, str]]:
    """``(directory, entry)`` on the way to ``path`` where uid:gid lacks search permission."""
    out = []
    cur = Path("/")
    for part in Path(path).parts[1:]:
        st = os.stat(cur)
        if not (st.st_mode & stat.S_IXOTH or (st.st_gid == gid and st.st_mode & stat.S_IXGRP)
                or (st.st_uid == uid and st.st_mode & stat.S_IXUSR)):
            out.append((str(cur), part))
        cur = cur / part
    return out


def stand_ins(sb: Sandbox, paths: list[str]) -> list[str]:
    """Shell lines covering every unsearchable directory on ``paths`` by a 0711 stand-in
    that holds bind mounts of only the entries on those paths (deepest first, so that an
    outer stand-in's recursive bind carries the inner one)."""
    wanted: dict[str, set[str]] = {}
    for path in paths:
        for directory, entry in unsearchable(path, QEMU_UID, QEMU_GID):
            wanted.setdefault(directory, set()).add(entry)
    if "/" in wanted:
        pytest.skip("uid 107 cannot search /: nothing to stand in for it")
    lines = []
    for n, directory in enumerate(sorted(wanted, key=lambda d: -d.count("/"))):
        view = sb.path(f"stand-in{n}")
        os.mkdir(view)
        os.chmod(view, 0o711)
        for entry in sorted(wanted[directory]):
            real = os.path.join(directory, entry)
            if os.path.isdir(real):
                os.mkdir(os.path.join(view, entry))
            else:
                Path(view, entry).touch()
            lines.append(f"mount --rbind '{real}' '{view}/{entry}'")
        lines.append(f"mount --rbind '{view}' '{directory}'")
    return lines


def status_ids(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def cni_add(sb: Sandbox) -> None:
    """The pod namespace as the CNI plugin leaves it, from the kernel's defaults."""
    sb.sysctl(sb.host_ns, "net.ipv4.ping_group_range", "1 0")
    sb.sysctl(sb.host_ns, "net.ipv4.ip_unprivileged_port_start", "1024")
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "pc" + sb.suffix,
           "CNI_NETNS": f"/run/netns/{sb.host_ns}", "CNI_IFNAME": "net1",
           "CNI_PATH": "/opt/cni/bin"}
    conf = {"cniVersion": "1.0.0", "name": "netbindingpasst", "type": "kubevirt-passt-binding",
            "args": {"cni": {"logicNetworkName": "default"}}}
    r = subprocess.run([str(CNI_PLUGIN)], input=json.dumps(conf), env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    got = sb.host("sysctl", "-n", "net.ipv4.ping_group_range",
                  "net.ipv4.ip_unprivileged_port_start").stdout.split()
    assert got == ["107", "107", "0"], got


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ns_pids(mntns: str) -> list[int]:
    """Processes in the mount namespace ``mntns`` (``mnt:[inode]``): ours only."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == mntns:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def accounts(sb: Sandbox, home: str) -> list[str]:
    """Shell lines bind-mounting copies of /etc/passwd and /etc/group that have
    virt-launcher's ``qemu`` (107:107) account."""
    lines = []
    for name, entry in (("passwd", f"qemu:x:{QEMU_UID}:{QEMU_GID}:qemu user:{home}:/sbin/nologin"),
                        ("group", f"qemu:x:{QEMU_GID}:")):
        kept = [ln for ln in Path("/etc", name).read_text().splitlines()
                if not ln.startswith("qemu:")]
        Path(sb.path(name)).write_text("\n".join([*kept, entry]) + "\n")
        lines.append(f"mount --bind '{sb.path(name)}' /etc/{name}")
    return lines


def mkdir_107(path: str, mode: int = 0o755) -> str:
    os.makedirs(path)
    os.chmod(path, mode)
    os.chown(path, QEMU_UID, QEMU_GID)
    return path


@dataclass
class Libvirt:
    sb: Sandbox
    mode: str      # "system": libvirtd as root; "session": libvirtd as 107
    uri: str
    vm: str        # 107's directory (the pod's /var/run/kubevirt): passt's log, console, image
    run_dir: str   # libvirt's QEMU run directory as libvirtd sees it (pid files, passt/)
    log_dir: str   # the domain logs, here

    def local(self, path: str) -> str:
        """Where a path of libvirtd's mount namespace is in ours."""
        if self.mode == "system":
            for name, real in STATE_DIRS.items():
                if path == real or path.startswith(real + "/"):
                    return self.sb.path(name) + path[len(real):]
        return path

    def virsh(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VIRSH, "-c", self.uri, *args], capture_output=True, text=True,
                              timeout=timeout)

    def log(self) -> str:
        text = Path(self.sb.path("libvirtd.log")).read_text(errors="replace")[-2000:]
        qemu_log = Path(self.log_dir, DOMAIN_NAME + ".log")
        if qemu_log.exists():
            text += "\n--- domain log ---\n" + qemu_log.read_text(errors="replace")[-3000:]
        return text


@pytest.fixture(params=MODES)
def libvirt(request: pytest.FixtureRequest, sandbox: Sandbox):
    """libvirtd + virtlogd as in a virt-launcher pod, in ``request.param`` mode."""
    if libvirt_major() < 11 or not VIRSH or not VIRTLOGD:
        pytest.skip("needs libvirt >= 11 (bookworm-backports; scripts/install-system-deps.sh)")
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                         timeout=30).stdout if shutil.which("qemu-system-x86_64") else ""
    if not any(f"version {n}." in out for n in range(10, 30)):
        pytest.skip("needs QEMU >= 10 (bookworm-backports)")
    for tool in ("unshare", "nsenter", "setpriv"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (util-linux)")
    sb, mode = sandbox, request.param
    vm = mkdir_107(sb.path("vm"))
    private = mkdir_107(sb.path("private"), 0o700)  # the pod's /var/run/kubevirt-private
    wrap = sb.path("bin")
    os.mkdir(wrap)
    with open(os.path.join(wrap, "passt"), "w") as f:
        # as libvirt finds passt in a virt-launcher pod: by name, first in PATH
        f.write(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {vm}/passt-argv\n"
                f"PASSTCORE_PYTHON={sys.executable} exec {PASST_WRAPPER} \"$@\"\n")
    os.chmod(os.path.join(wrap, "passt"), 0o755)
    env = dict(os.environ, PATH=wrap + ":" + os.environ["PATH"])
    script = ["set -e", *accounts(sb, private)]
    if os.path.exists("/dev/kvm"):
        # no usable KVM, as in a pod with software emulation (the domain is TCG anyway):
        # libvirt checks /dev/kvm as the qemu user but probes QEMU with CAP_DAC_OVERRIDE, and
        # a root-only /dev/kvm makes it re-probe on every capabilities lookup (~50 s a boot)
        Path(sb.path("no-kvm")).touch(0o600)
        script.append(f"mount --bind '{sb.path('no-kvm')}' /dev/kvm")
    if mode == "system":
        for name, real in STATE_DIRS.items():
            if not os.path.isdir(real):
                pytest.skip(f"{real} missing: libvirt not installed as the Debian packages do")
            os.mkdir(sb.path(name))
            script.append(f"mount --bind '{sb.path(name)}' '{real}'")
        with open(sb.path("qemu.conf"), "w") as f:
            f.write(QEMU_CONF)
        script.append(f"mount --bind '{sb.path('qemu.conf')}' /etc/libvirt/qemu.conf")
        runas: list[str] = []
        sockets = sb.path("run")
        lv = Libvirt(sb, mode, f"qemu:///system?socket={sockets}/libvirt-sock", vm,
                     "/run/libvirt/qemu", sb.path("log/qemu"))
    else:
        # KubeVirt's non-root layout: config and cache in the private directory (where
        # virt-launcher copies qemu.conf), the runtime directory beside it
        xdg_run = mkdir_107(sb.path("xdg-run"), 0o700)
        Path(mkdir_107(os.path.join(private, "libvirt")), "qemu.conf").write_text(QEMU_CONF)
        env.update(HOME=private, USER="qemu", XDG_CONFIG_HOME=private, XDG_CACHE_HOME=private,
                   XDG_RUNTIME_DIR=xdg_run)
        runas = ["setpriv", f"--reuid={QEMU_UID}", f"--regid={QEMU_GID}", "--init-groups"]
        sockets = os.path.join(xdg_run, "libvirt")
        lv = Libvirt(sb, mode, f"qemu:///session?socket={sockets}/libvirt-sock", vm,
                     os.path.join(sockets, "qemu", "run"),
                     os.path.join(private, "libvirt", "qemu", "log"))
    script += stand_ins(sb, [os.path.realpath(sys.executable), sys.base_prefix, sys.prefix,
                             str(REPO)])
    # virt-launcher gives a non-root virtqemud CAP_NET_BIND_SERVICE as an ambient capability
    caps = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"] if runas else []
    script.append(" ".join(["exec", "ip", "netns", "exec", sb.host_ns, *runas, *caps, LIBVIRTD]))
    with open(sb.path("libvirtd.sh"), "w") as f:
        f.write("\n".join(script) + "\n")
    cni_add(sb)
    with open(sb.path("libvirtd.log"), "wb") as out:
        daemon = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh",
                                   sb.path("libvirtd.sh")], env=env, stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT)
    logd = None
    mntns = ""
    try:
        wait_for(lambda: os.path.exists(f"{sockets}/libvirt-sock") or daemon.poll() is not None,
                 30, "libvirtd")
        assert daemon.poll() is None, "libvirtd exited:\n" + lv.log()
        mntns = os.readlink(f"/proc/{daemon.pid}/ns/mnt")
        with open(sb.path("virtlogd.log"), "wb") as out:
            logd = subprocess.Popen(["nsenter", f"--target={daemon.pid}", "--mount", *runas,
                                     VIRTLOGD], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.exists(f"{sockets}/virtlogd-sock") or logd.poll() is not None,
                 30, "virtlogd")
        assert logd.poll() is None, Path(sb.path("virtlogd.log")).read_text(errors="replace")
        yield lv
    finally:
        try:
            lv.virsh("destroy", DOMAIN_NAME, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        stop_process(daemon, timeout=10)
        stop_process(logd, timeout=10)
        if mntns:  # passt or QEMU left behind by a libvirtd that did not stop them
            for pid in ns_pids(mntns):
                stop_process(None, pid, timeout=5)
        for top, _, files in os.walk(sb.tmpdir):
            for name in files:
                path = os.path.join(top, name)
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)


@pytest.mark.parametrize("flavour", domain.FLAVOURS)
def test_sidecar_domain_boots_under_libvirt(libvirt: Libvirt, flavour: str) -> None:
    from passtcore.sandbox import guest
    from passtcore.sandbox.guest import Console

    lv, sb = libvirt, libvirt.sb
    try:
        kernel, initrd = guest.image(log=lambda m: None)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        pytest.skip(f"no guest image: {exc}")
    for src in (kernel, initrd):  # dynamic ownership chowns them: the sandbox's copies
        shutil.copyfile(src, os.path.join(lv.vm, os.path.basename(src)))
    kernel, initrd = (os.path.join(lv.vm, os.path.basename(p)) for p in (kernel, initrd))
    xml = domain.on_define_domain(json.dumps(VMI).encode(), VIRT_LAUNCHER_DOMAIN,
                                  flavour=flavour).decode()
    if flavour == "vhostuser":
        assert 'type="vhostuser"' in xml and "memfd" in xml
    else:
        assert 'type="user"' in xml and "memoryBacking" not in xml
    # the pod's log directory (/var/run/kubevirt) is 107's directory of the sandbox here
    log_path = os.path.join(lv.vm, "passt.log")
    xml = xml.replace(domain.PASST_LOG_FILE, log_path)
    con = os.path.join(lv.vm, "console.sock")
    boot = (f"<kernel>{kernel}</kernel><initrd>{initrd}</initrd>"
            "<cmdline>console=ttyS0 panic=-1 quiet</cmdline>")
    xml = xml.replace("</os>", boot + "</os>", 1).replace(
        "</devices>", f"<serial type='unix'><source mode='bind' path='{con}'/>"
                      "<target port='0'/></serial></devices>", 1)
    with open(sb.path("domain.xml"), "w") as f:
        f.write(xml)
    r = lv.virsh("create", sb.path("domain.xml"))
    assert r.returncode == 0, r.stderr + lv.log()

    # libvirt's own argv for passt (qemuPasstBuildCommand), exactly
    dom_id = lv.virsh("domid", DOMAIN_NAME, timeout=30).stdout.strip()
    base = f"{lv.run_dir}/passt/{dom_id}-{DOMAIN_NAME}-ua-default"
    argv = Path(lv.vm, "passt-argv").read_text().splitlines()
    assert argv == ["--vhost-user"] * (flavour == "vhostuser") + [
        "--one-off", "--socket", base + ".socket", "--pid", base + "-passt.pid",
        "--interface", "eth0", "--log-file", log_path,
        "--tcp-ports", str(TCP_PORT), "--udp-ports", str(UDP_PORT)], argv
    # the process the pid file names: libvirt's passt, as 107:107 with no capabilities
    pid = int(Path(lv.local(base + "-passt.pid")).read_text())
    ids = status_ids(pid)
    assert ids["Uid"].split() == [str(QEMU_UID)] * 4, ids["Uid"]
    assert ids["Gid"].split() == [str(QEMU_GID)] * 4, ids["Gid"]
    assert int(ids["CapEff"], 16) == 0 and int(ids["CapPrm"], 16) == 0, ids["CapEff"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    assert cmdline[-len(argv):] == argv, cmdline
    assert os.stat(lv.local(base + ".socket")).st_uid == QEMU_UID
    qemu_pid = int(Path(lv.local(f"{lv.run_dir}/{DOMAIN_NAME}.pid")).read_text())
    assert status_ids(qemu_pid)["Uid"].split() == [str(QEMU_UID)] * 4

    console = Console(con, timeout=30)
    try:
        console.wait_ready(120)
        rc, out = console.run("udhcpc -i eth0 -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script"
                              f" && ping -c 2 -W 3 {sb.gw4}", 90)
        assert rc == 0 and "2 packets received" in out, out + lv.log()
        # the forwarded port reaches the guest
        console.run(f"(echo hello-from-guest | nc -l -p {TCP_PORT} &) ; sleep 1")
        got = sb.host(sys.executable, "-c",
                      "import socket\n"
                      f"s=socket.create_connection(('127.0.0.1',{TCP_PORT}),timeout=20)\n"
                      "print(s.recv(100).decode().strip())", timeout=60).stdout.strip()
        assert got == "hello-from-guest"
        # and it was that PID that served it: its counters (SIGUSR1 -> its log file)
        counters = Daemon(sb, None, pid, log_path, None, None, argv).counters(timeout=10)
        assert counters["frames_in"] > 0 and counters["frames_out"] > 0, counters
        assert counters.get("icmp-reply", 0) >= 2, counters
    finally:
        console.close()
    # passt goes with the domain. For <interface type="user"> libvirt's stop path kills the
    # pid file's PID and unlinks pid file and socket; 11.3 runs it for that type only, so a
    # vhost-user passt ends by --one-off when QEMU's connection goes, its files left behind.
    r = lv.virsh("destroy", DOMAIN_NAME, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not alive(pid), 15, "passt to exit after virsh destroy", 0.05)
    if flavour == "stream":
        assert not os.path.exists(lv.local(base + ".socket"))
        assert not os.path.exists(lv.local(base + "-passt.pid"))
