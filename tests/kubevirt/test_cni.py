"""The CNI plugin ``kubevirt-passt-binding``, run exactly as a container runtime runs it.

Every test execs the installed console script with the CNI environment
(CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH) and the network
configuration on stdin, and checks stdout, stderr and the exit status against
kubevirt-binding.md section 2. ADD runs against real network namespaces made
here (``ip netns add`` with a random suffix, deleted in a finally); the sysctls
are read back with ``ip netns exec ... sysctl`` (an independent reader), and
checked unchanged in this process's own namespace and in a second, untouched
namespace.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passtcore.kubevirt import cni as cni_module

PLUGIN = Path(sys.executable).parent / "kubevirt-passt-binding"
SUPPORTED = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
SUPPORTED_Q = " ".join(f'"{v}"' for v in SUPPORTED)
PORT_START = "net.ipv4.ip_unprivileged_port_start"
PING_RANGE = "net.ipv4.ping_group_range"

NAD_CONFIG = {
    "cniVersion": "1.0.0",
    "name": "netbindingpasst",
    "type": "kubevirt-passt-binding",
    "args": {"cni": {"logicNetworkName": "default"}},
}

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
)


def run_plugin(
    command: str | None,
    config: object = NAD_CONFIG,
    *,
    netns: str | None = "/run/netns/absent-namespace",
    containerid: str | None = "0123456789abcdef",
    ifname: str | None = "net1",
    path: str | None = "/opt/cni/bin",
    extra: dict[str, str] | None = None,
    plugin: Path | str = PLUGIN,
    wrap: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Exec the plugin with a clean CNI environment; ``config`` goes to stdin."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for name, value in (
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", containerid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", path),
    ):
        if value is not None:
            env[name] = value
    env.update(extra or {})
    stdin = config if isinstance(config, str) else json.dumps(config)
    return subprocess.run(
        [*(wrap or []), str(plugin)],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def error_of(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The CNI error object; asserts the error contract (exit 1, 4-space JSON, no newline)."""
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    err = json.loads(proc.stdout)
    assert set(err) <= {"code", "msg", "details"}
    go_escaped = json.dumps(err, indent=4, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        go_escaped = go_escaped.replace(char, escape)
    assert proc.stdout == go_escaped
    return err


def host_sysctl(name: str) -> str:
    return Path("/proc/sys/" + name.replace(".", "/")).read_text().strip()


def ns_sysctl(ns_name: str, name: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns_name, "sysctl", "-n", name],
        capture_output=True, text=True, check=True, timeout=10,
    )
    return out.stdout.strip()


@pytest.fixture
def make_netns() -> Iterator:
    """Factory of fresh named network namespaces, all deleted at teardown."""
    names: list[str] = []

    def make() -> str:
        name = f"pcni-{uuid.uuid4().hex[:10]}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
        names.append(name)
        return name

    try:
        yield make
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], timeout=10)


def test_console_script_installed() -> None:
    assert PLUGIN.is_file() and os.access(PLUGIN, os.X_OK), PLUGIN


# --- ADD against real namespaces -------------------------------------------------


@pytest.mark.netns
@needs_root
def test_add_sets_sysctls_only_in_the_target_netns(make_netns) -> None:
    target, bystander = make_netns(), make_netns()
    before_host = (host_sysctl(PORT_START), host_sysctl(PING_RANGE))
    before_other = (ns_sysctl(bystander, PORT_START), ns_sysctl(bystander, PING_RANGE))
    # Fresh namespaces start with the kernel defaults, so the ADD must change them.
    assert (ns_sysctl(target, PORT_START), ns_sysctl(target, PING_RANGE)) == ("1024", "1\t0")

    # CNI_ARGS as Multus passes it for a pod (ignored by the plugin).
    cni_args = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=virt-launcher-vm-abcde;"
                "K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef;K8S_POD_UID=1234")
    proc = run_plugin("ADD", netns=f"/run/netns/{target}", extra={"CNI_ARGS": cni_args})

    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert proc.stdout == '{\n    "cniVersion": "1.0.0"\n}'
    assert "setup for logical network default completed successfully" in proc.stderr
    assert ns_sysctl(target, PORT_START) == "0"
    assert ns_sysctl(target, PING_RANGE) == "107\t107"
    assert (host_sysctl(PORT_START), host_sysctl(PING_RANGE)) == before_host
    assert (ns_sysctl(bystander, PORT_START), ns_sysctl(bystander, PING_RANGE)) == before_other


@pytest.mark.netns
@needs_root
@pytest.mark.parametrize("version", SUPPORTED)
def test_add_result_echoes_config_version(make_netns, version: str) -> None:
    ns = make_netns()
    config = {"cniVersion": version, "name": "netbindingpasst", "type": "kubevirt-passt-binding"}
    proc = run_plugin("ADD", config, netns=f"/run/netns/{ns}")
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout) == {"cniVersion": version}
    assert proc.stdout == json.dumps({"cniVersion": version}, indent=4)
    # No cni-args: the log line names an empty logical network.
    assert "setup for logical network  completed successfully" in proc.stderr


@pytest.mark.netns
@needs_root
def test_add_without_cni_version_prints_empty_object(make_netns) -> None:
    ns = make_netns()
    proc = run_plugin("ADD", {"name": "netbindingpasst"}, netns=f"/run/netns/{ns}")
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout == "{}"
    assert ns_sysctl(ns, PORT_START) == "0"


@pytest.mark.netns
@needs_root
def test_add_is_idempotent_and_accepts_proc_pid_path(make_netns) -> None:
    ns = make_netns()
    # A process living in the namespace: its /proc/PID/ns/net is what runtimes pass.
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "30"])
    try:
        pid_path = None
        for _ in range(500):  # bounded wait (10 s) for the exec into the namespace
            path = f"/proc/{sleeper.pid}/ns/net"
            if os.stat(path).st_ino == os.stat(f"/run/netns/{ns}").st_ino:
                pid_path = path
                break
            time.sleep(0.02)
        assert pid_path is not None
        for _ in range(2):
            proc = run_plugin("ADD", netns=pid_path)
            assert proc.returncode == 0, proc.stdout
        assert ns_sysctl(ns, PING_RANGE) == "107\t107"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.netns
@needs_root
def test_parallel_adds_each_touch_only_their_own_netns(make_netns) -> None:
    """The kubelet runs plugins for many pods at once: 6 concurrent ADDs, 6 namespaces."""
    from concurrent.futures import ThreadPoolExecutor

    targets = [make_netns() for _ in range(6)]
    bystander = make_netns()
    with ThreadPoolExecutor(len(targets)) as pool:
        procs = list(pool.map(lambda ns: run_plugin("ADD", netns=f"/run/netns/{ns}"), targets))
    assert [p.returncode for p in procs] == [0] * len(targets), [p.stdout for p in procs]
    for ns in targets:
        assert (ns_sysctl(ns, PORT_START), ns_sysctl(ns, PING_RANGE)) == ("0", "107\t107")
    assert (ns_sysctl(bystander, PORT_START), ns_sysctl(bystander, PING_RANGE)) == ("1024", "1\t0")


@pytest.mark.netns
@needs_root
def test_add_in_the_plugins_own_netns_is_refused_before_writing() -> None:
    before = (host_sysctl(PORT_START), host_sysctl(PING_RANGE))
    proc = run_plugin("ADD", netns="/proc/self/ns/net")
    err = error_of(proc)
    assert err == {
        "code": 8,
        "msg": "plugin's netns and netns from CNI_NETNS should not be the same",
    }
    assert (host_sysctl(PORT_START), host_sysctl(PING_RANGE)) == before


@pytest.mark.netns
@needs_root
def test_add_missing_netns_names_the_path() -> None:
    path = f"/run/netns/pcni-missing-{uuid.uuid4().hex[:8]}"
    err = error_of(run_plugin("ADD", netns=path))
    assert err == {
        "code": 999,
        "msg": f'failed to open netns "{path}": failed to Statfs "{path}": '
        "no such file or directory",
    }


@pytest.mark.netns
@needs_root
def test_add_on_a_path_that_is_not_a_netns(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    err = error_of(run_plugin("ADD", netns=str(plain)))
    assert err["code"] == 999
    assert err["msg"] == f'failed to open netns "{plain}": "{plain}" is not a network namespace'
    # A namespace of another type is not a network namespace either.
    err = error_of(run_plugin("ADD", netns="/proc/self/ns/mnt"))
    assert err["code"] == 999 and "is not a network namespace" in str(err["msg"])


@pytest.mark.netns
@needs_root
def test_add_bad_netconf_types_fail_after_netns_check(make_netns) -> None:
    ns = make_netns()
    config = {"cniVersion": "1.0.0", "name": "n", "args": {"cni": {"logicNetworkName": 5}}}
    err = error_of(run_plugin("ADD", config, netns=f"/run/netns/{ns}"))
    assert err["code"] == 999
    assert str(err["msg"]).startswith("failed to load netconf: json: cannot unmarshal number")
    assert ns_sysctl(ns, PORT_START) == "1024"  # nothing written


@pytest.mark.netns
@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_add_failing_sysctl_write_is_error_999(make_netns) -> None:
    ns = make_netns()
    # A private mount namespace where /proc/sys is read-only: the write itself fails.
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -o bind,ro /proc/sys /proc/sys && exec "$0"']
    err = error_of(run_plugin("ADD", netns=f"/run/netns/{ns}", wrap=wrap))
    assert err == {
        "code": 999,
        "msg": "open /proc/sys/net/ipv4/ip_unprivileged_port_start: read-only file system",
    }
    assert ns_sysctl(ns, PORT_START) == "1024"


@pytest.mark.netns
@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_add_without_privileges_cannot_enter(make_netns) -> None:
    ns = make_netns()
    wrap = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all"]
    err = error_of(run_plugin("ADD", netns=f"/run/netns/{ns}", wrap=wrap))
    assert err["code"] == 999
    assert str(err["msg"]).startswith(f'failed to open netns "/run/netns/{ns}": ')
    assert ns_sysctl(ns, PORT_START) == "1024"


# --- DEL, CHECK, GC, STATUS, VERSION ----------------------------------------------


def test_del_on_missing_namespace_succeeds() -> None:
    proc = run_plugin("DEL", netns=f"/run/netns/pcni-gone-{uuid.uuid4().hex[:8]}")
    assert (proc.returncode, proc.stdout) == (0, "")


def test_del_without_netns_succeeds() -> None:
    proc = run_plugin("DEL", netns=None)
    assert (proc.returncode, proc.stdout) == (0, "")


@pytest.mark.netns
@needs_root
def test_del_on_existing_namespace_changes_nothing(make_netns) -> None:
    ns = make_netns()
    assert run_plugin("ADD", netns=f"/run/netns/{ns}").returncode == 0
    proc = run_plugin("DEL", netns=f"/run/netns/{ns}")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert ns_sysctl(ns, PORT_START) == "0"


def test_del_in_own_netns_is_code_8_unless_overridden() -> None:
    err = error_of(run_plugin("DEL", netns="/proc/self/ns/net"))
    assert err["code"] == 8
    for override in ("1", "true", "TRUE"):
        proc = run_plugin("DEL", netns="/proc/self/ns/net", extra={"CNI_NETNS_OVERRIDE": override})
        assert (proc.returncode, proc.stdout) == (0, ""), override


def test_version_output() -> None:
    proc = run_plugin("VERSION", "this is not read", netns=None, containerid=None,
                      ifname=None, path=None)
    assert proc.returncode == 0
    assert proc.stdout == (
        '{"cniVersion":"1.1.0","supportedVersions":'
        '["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n'
    )


def test_no_command_prints_about_to_stderr() -> None:
    proc = run_plugin(None)
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == (
        "CNI passt-binding plugin version unknown\n"
        "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n"
    )


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_succeeds_silently(version: str) -> None:
    proc = run_plugin("CHECK", {"cniVersion": version, "name": "n"})
    assert (proc.returncode, proc.stdout) == (0, "")


@pytest.mark.parametrize("version", ["0.3.1", "0.1.0", None])
def test_check_needs_040(version: str | None) -> None:
    config = {"name": "n"} if version is None else {"cniVersion": version, "name": "n"}
    err = error_of(run_plugin("CHECK", config))
    assert err == {"code": 1, "msg": "config version does not allow CHECK"}


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_status_shapes(command: str) -> None:
    only_path = {"netns": None, "containerid": None, "ifname": None}
    proc = run_plugin(command, {"cniVersion": "1.1.0", "name": "n"}, **only_path)
    assert (proc.returncode, proc.stdout) == (0, "")
    err = error_of(run_plugin(command, {"cniVersion": "1.0.0", "name": "n"}, **only_path))
    assert err == {"code": 1, "msg": f"config version does not allow {command}"}
    err = error_of(run_plugin(command, {"cniVersion": "1.1.0", "name": "n"}, netns=None,
                              containerid=None, ifname=None, path=None))
    assert err == {"code": 4, "msg": "required env variables [CNI_PATH] missing"}


def test_version_beyond_the_plugin() -> None:
    err = error_of(run_plugin("CHECK", {"cniVersion": "2.0.0", "name": "n"}))
    assert err == {"code": 1, "msg": "plugin version does not allow CHECK"}
    err = error_of(run_plugin("CHECK", {"cniVersion": "0.5.0", "name": "n"}))
    assert err["code"] == 1 and err["msg"] == "incompatible CNI versions"
    err = error_of(run_plugin("CHECK", {"cniVersion": "x.y", "name": "n"}))
    assert err == {
        "code": 6,
        "msg": 'failed to convert major version part "x": strconv.Atoi: parsing "x": '
        "invalid syntax",
    }


# --- environment and stdin validation ------------------------------------------------


@pytest.mark.parametrize(
    ("command", "drop", "missing"),
    [
        ("ADD", ["netns"], "CNI_NETNS"),
        ("ADD", ["containerid", "ifname", "path"], "CNI_CONTAINERID,CNI_IFNAME,CNI_PATH"),
        ("ADD", ["containerid", "netns", "ifname", "path"],
         "CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH"),
        ("CHECK", ["netns", "path"], "CNI_NETNS,CNI_PATH"),
        ("DEL", ["netns", "ifname"], "CNI_IFNAME"),
        ("DEL", ["containerid"], "CNI_CONTAINERID"),
        ("GC", ["path", "netns", "ifname", "containerid"], "CNI_PATH"),
        ("STATUS", ["path"], "CNI_PATH"),
    ],
)
def test_missing_env(command: str, drop: list[str], missing: str) -> None:
    err = error_of(run_plugin(command, **{name: None for name in drop}))
    assert err == {"code": 4, "msg": f"required env variables [{missing}] missing"}


def test_empty_env_value_counts_as_missing() -> None:
    err = error_of(run_plugin("ADD", netns=""))
    assert err == {"code": 4, "msg": "required env variables [CNI_NETNS] missing"}


@pytest.mark.parametrize("cid", ["-leading-dash", "has space", "a/b", "_x", "a\nb", "<x>"])
def test_invalid_container_id(cid: str) -> None:
    err = error_of(run_plugin("ADD", containerid=cid))
    assert err == {"code": 4, "msg": "invalid characters in containerID", "details": cid}


def test_container_id_checked_before_later_env_and_stdin() -> None:
    # The library validates CNI_CONTAINERID as soon as it reads it.
    err = error_of(run_plugin("ADD", "not json", containerid="bad id", path=None))
    assert err["msg"] == "invalid characters in containerID"


@pytest.mark.parametrize(
    ("ifname", "msg", "details"),
    [
        ("a" * 16, "interface name is too long",
         "interface name should be less than 16 characters"),
        ("é" * 8, "interface name is too long",  # 16 bytes
         "interface name should be less than 16 characters"),
        (".", "interface name is . or ..", None),
        ("..", "interface name is . or ..", None),
        ("net/1", "interface name contains / or : or whitespace characters", None),
        ("net:1", "interface name contains / or : or whitespace characters", None),
        ("net 1", "interface name contains / or : or whitespace characters", None),
        ("net\t1", "interface name contains / or : or whitespace characters", None),
        ("net\u00a01", "interface name contains / or : or whitespace characters", None),
    ],
)
def test_invalid_interface_name(ifname: str, msg: str, details: str | None) -> None:
    err = error_of(run_plugin("ADD", ifname=ifname))
    expected = {"code": 4, "msg": msg}
    if details:
        expected["details"] = details
    assert err == expected


@pytest.mark.parametrize("ifname", ["a" * 15, "eth0", "net1", "pod1a2b3c4d5e6"])
def test_valid_interface_names_pass(ifname: str) -> None:
    proc = run_plugin("DEL", ifname=ifname)
    assert (proc.returncode, proc.stdout) == (0, "")


@pytest.mark.parametrize(
    ("stdin", "msg"),
    [
        ("", "error unmarshall network config: unexpected end of JSON input"),
        ('{"name": "x"', "error unmarshall network config: unexpected end of JSON input"),
        ("not json", None),  # Go names the first bad byte of the literal; not matched
        ("[1, 2]", "error unmarshall network config: json: cannot unmarshal array into Go "
                   'value of type struct { Name string "json:\\"name\\"" }'),
        ('{"name": 5}', None),
        ('{"name": "a"} x', "error unmarshall network config: invalid character 'x' after "
                            "top-level value"),
        ('{"name": NaN}', "error unmarshall network config: invalid character 'N' looking for "
                          "beginning of value"),
        ('{"name": "a\nb"}', "error unmarshall network config: invalid character '\\n' in "
                              "string literal"),
        ('{"name": "a\\qb"}', "error unmarshall network config: invalid character 'q' in "
                                "string escape code"),
        ("[" * 100_000, "error unmarshall network config: exceeded max depth"),
        ('{"a": 1 "b": 2}', "error unmarshall network config: invalid character '\"' after "
                            "object key:value pair"),
    ],
)
def test_stdin_not_json_is_code_6(stdin: str, msg: str | None) -> None:
    # Malformed or hostile input always yields the error object, never a traceback.
    err = error_of(run_plugin("ADD", stdin))
    assert err["code"] == 6
    assert str(err["msg"]).startswith("error unmarshall network config: ")
    if msg is not None:
        assert err["msg"] == msg


@pytest.mark.parametrize("config", [{}, {"name": ""}, {"cniVersion": "1.0.0"}, {"name": None}])
def test_missing_network_name_is_code_7(config: dict) -> None:
    for command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        err = error_of(run_plugin(command, config))
        assert err == {"code": 7, "msg": "missing network name"}, command


@pytest.mark.parametrize("name", ["-x", "has space", "a/b", "ünï"])
def test_invalid_network_name_is_code_7(name: str) -> None:
    err = error_of(run_plugin("ADD", {"cniVersion": "1.0.0", "name": name}))
    assert err == {"code": 7, "msg": "invalid characters found in network name", "details": name}


def test_network_name_key_matches_case_insensitively() -> None:
    proc = run_plugin("DEL", {"cniVersion": "1.0.0", "NAME": "ok"})
    assert (proc.returncode, proc.stdout) == (0, "")


@pytest.mark.parametrize("version", ["0.0.1", "9.9.9", "1.0", "v1.0.0"])
def test_incompatible_version_is_code_1(version: str) -> None:
    err = error_of(run_plugin("ADD", {"cniVersion": version, "name": "n"}))
    assert err == {
        "code": 1,
        "msg": "incompatible CNI versions",
        "details": f'config is "{version}", plugin supports [{SUPPORTED_Q}]',
    }


def test_cni_version_of_wrong_type_is_code_6() -> None:
    err = error_of(run_plugin("DEL", {"cniVersion": 1, "name": "n"}))
    assert err["code"] == 6
    assert str(err["msg"]).startswith("decoding version from network config: json: cannot")


def test_unknown_command_after_stdin_check() -> None:
    err = error_of(run_plugin("FROB"))
    assert err == {"code": 4, "msg": "unknown CNI_COMMAND: FROB"}
    # A bad config is reported first.
    err = error_of(run_plugin("FROB", {"cniVersion": "1.0.0"}))
    assert err == {"code": 7, "msg": "missing network name"}


def test_go_style_html_escapes_in_error_json() -> None:
    proc = run_plugin("ADD", containerid="<a&b>")
    assert "\\u003ca\\u0026b\\u003e" in proc.stdout
    assert error_of(proc)["details"] == "<a&b>"


def test_plugin_imports_nothing_heavy(tmp_path: Path) -> None:
    """Start-up budget: stdlib basics only; no numpy, kernels, json, logging, pyroute2, grpc."""
    plain = tmp_path / "plain-file"
    plain.write_text("")
    root = Path(__file__).resolve().parents[2]
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from passtcore.kubevirt.cni import main; sys.exit(main())")
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": str(plain),
           "CNI_IFNAME": "net1", "CNI_PATH": "/opt/cni/bin"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-I", "-S", "-c", code, str(root)],
                          input=json.dumps(NAD_CONFIG), env=env, capture_output=True, text=True,
                          timeout=30)
    assert error_of(proc)["code"] == 999  # ran through netns_problem: passtcore.netns loaded
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "passtcore.netns" in imported and "passtcore.kubevirt.cni" in imported
    # json: valid input is scanned by _json alone (the json package compiles regexes).
    heavy = {"numpy", "passtcore._backend", "passtcore_py", "logging", "pyroute2", "grpc",
             "asyncio", "subprocess", "argparse", "socket", "json"}
    assert not heavy & imported, heavy & imported


# --- the plugin's JSON layer against the json package (in process) --------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _go_escaped(text: str) -> str:
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


@settings(max_examples=200, deadline=None)
@given(_json_values, st.sampled_from([None, 4]))
def test_go_json_matches_json_dumps(value: object, indent: int | None) -> None:
    expected = json.dumps(value, ensure_ascii=False, indent=indent,
                          separators=(",", ":") if indent is None else (",", ": "))
    assert cni_module.go_json(value, indent) == _go_escaped(expected)


@settings(max_examples=200, deadline=None)
@given(_json_values, st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_fast_decoder_matches_json_loads(value: object, space: str) -> None:
    text = space + json.dumps(value, indent=2 if space else None) + space
    assert cni_module._loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", " ", "{", '{"a": 1} {', "[1,]", '{"a": NaN}', "\ufeff{}",
                                  '"\x01"', "nul"])
def test_fast_decoder_rejects_what_json_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        cni_module._loads(text)
