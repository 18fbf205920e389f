"""CNI plugin ``kubevirt-passt-binding``: two sysctls in the pod's netns.

KubeVirt's passt binding runs passt as the unprivileged "qemu" user (uid/gid
107) inside the virt-launcher pod. For it to bind ports below 1024 and to open
ICMP echo sockets, the pod network namespace needs
``net.ipv4.ip_unprivileged_port_start=0`` and
``net.ipv4.ping_group_range="107 107"``. Multus runs this plugin as an extra
attachment of the pod; it configures nothing else (contract:
kubevirt-binding.md section 2, decisions in section 5).

Design:

* The whole CNI "skel" protocol of the v1.2 CNI library is reproduced here:
  per-command required environment variables, container-id / interface-name /
  network-name validation in the library's order, version reconciliation, the
  CHECK / GC / STATUS version floors and the error object
  ``{"code", "msg", "details"}`` on stdout with exit status 1. Messages and
  codes are the library's (tests compare them), including Go-flavoured JSON
  and ``%q`` formatting.
* The kubelet runs the plugin once per pod, so start-up is the cost that
  matters: only ``os``, ``sys`` and ``_json`` (the C half of the json
  package: importing ``json`` itself compiles regular expressions, more CPU
  than the rest of an ADD) are imported up front; the namespace helpers
  (ctypes) are imported for ADD only, ``json`` only to explain malformed
  input. ``passtcore`` itself is lazy and its kernels are never touched.
* ADD enters the namespace in the calling thread with
  :func:`passtcore.netns.entered`, which restores the original namespace. The
  "netns is the plugin's own" check runs *before* the sysctls are written (the
  library runs it afterwards, which would first change the host's own
  sysctls); the error and its code are the library's.
* Deliberate difference from upstream (decision 5.4): the netns error names the
  path, ``failed to open netns "<path>": <reason>``.
"""
from __future__ import annotations

import _json  # the json package's C scanner and string encoder; see _loads
import os
import sys

TYPE_CHECKING = False  # typing is not imported at run time: start-up cost
if TYPE_CHECKING:
    from collections.abc import Callable

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
PLUGIN_VERSION = "1.1.0"
ABOUT = "CNI passt-binding plugin version unknown"

# The qemu user/group of virt-launcher (passt runs as uid/gid 107).
SYSCTLS = (
    ("net.ipv4.ip_unprivileged_port_start", "0"),
    ("net.ipv4.ping_group_range", "107 107"),
)

# CNI error codes (containernetworking/cni pkg/types).
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODING = 6
ERR_INVALID_NETCONF = 7
ERR_INVALID_NETNS = 8
ERR_INTERNAL = 999

MAX_IFNAME_LEN = 15

# Environment variables in the library's order, with the commands needing them.
_ENV_REQUIRED = (
    ("CNI_COMMAND", frozenset({"ADD", "CHECK", "DEL", "GC", "STATUS"})),
    ("CNI_CONTAINERID", frozenset({"ADD", "CHECK", "DEL"})),
    ("CNI_NETNS", frozenset({"ADD", "CHECK"})),
    ("CNI_IFNAME", frozenset({"ADD", "CHECK", "DEL"})),
    ("CNI_ARGS", frozenset()),
    ("CNI_PATH", frozenset({"ADD", "CHECK", "DEL", "GC", "STATUS"})),
    ("CNI_NETNS_OVERRIDE", frozenset()),
)

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")
# Go's unicode.IsSpace (White_Space property); str.isspace() differs (\x1c-\x1f).
_GO_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class CNIError(Exception):
    """A typed CNI error: printed as JSON on stdout, exit status 1."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self) -> str:
        obj: dict[str, object] = {"code": self.code, "msg": _text(self.msg)}
        if self.details:
            obj["details"] = _text(self.details)
        return go_json(obj, indent=4)


# --- Go compatibility helpers -------------------------------------------------


def _text(s: str) -> str:
    """Bytes that came in as surrogate escapes become U+FFFD, as in Go."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def go_json(obj: object, indent: int | None = None) -> str:
    """JSON as Go's encoding/json writes it (HTML-safe escapes, UTF-8 kept).

    ``indent`` gives MarshalIndent's layout (the same as json.dumps(indent=)).
    """
    return (
        _encode(obj, indent, 0)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _encode(obj: object, indent: int | None, level: int) -> str:
    if isinstance(obj, str):
        return _json.encode_basestring(obj)
    if obj is None or isinstance(obj, bool):
        return {None: "null", True: "true", False: "false"}[obj]
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, dict):
        parts = [f"{_json.encode_basestring(k)}:{'' if indent is None else ' '}"
                 f"{_encode(v, indent, level + 1)}" for k, v in obj.items()]
        opening, closing = "{", "}"
    elif isinstance(obj, (list, tuple)):
        parts = [_encode(v, indent, level + 1) for v in obj]
        opening, closing = "[", "]"
    else:
        raise TypeError(f"cannot encode {type(obj).__name__}")
    if not parts:
        return opening + closing
    if indent is None:
        return opening + ",".join(parts) + closing
    inner = "\n" + " " * (indent * (level + 1))
    return opening + inner + ("," + inner).join(parts) + "\n" + " " * (indent * level) + closing


def go_quote(s: str) -> str:
    """Go's ``%q`` (strconv.Quote) for the strings that appear in messages."""
    out = ['"']
    for ch in _text(s):
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _go_strerror(err: OSError) -> str:
    # Go's syscall.Errno strings are the C ones with a lower-case first letter.
    text = os.strerror(err.errno) if err.errno else str(err)
    return text[:1].lower() + text[1:]


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> object:
    # Go's JSON has no NaN / Infinity literals.
    if name.startswith("-"):
        raise ValueError(f"invalid character '{name[1]}' in numeric literal")
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


class _ScanContext:
    """The settings ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    def __init__(self) -> None:
        self.strict = True  # no raw control characters in strings, as in Go
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = _reject_constant


_scan = _json.make_scanner(_ScanContext())
_JSON_SPACE = " \t\n\r"


def _loads(text: str) -> object:
    """``json.loads`` for valid input without importing the json package.

    Importing ``json`` compiles its regular expressions and pulls in ``re`` and
    ``enum``: more CPU than the rest of an ADD. Valid input (the normal case)
    goes through the same C scanner json.loads uses; anything else is handed
    to json.loads itself, which raises the precise JSONDecodeError (the C
    scanner needs json.decoder loaded to report errors).
    """
    i, n = 0, len(text)
    while i < n and text[i] in _JSON_SPACE:
        i += 1
    try:
        value, end = _scan(text, i)
    except RecursionError:
        raise
    except Exception:  # noqa: BLE001 - syntax errors are explained below
        end = -1
    if end >= 0:
        while end < n and text[end] in _JSON_SPACE:
            end += 1
        if end == n:
            return value
    import json

    return json.loads(text, parse_constant=_reject_constant)


def _go_decode(data: bytes) -> object:
    """Decode with Go's strictness; errors carry Go-style messages."""
    text = data.decode("utf-8", "replace")  # Go substitutes U+FFFD too
    try:
        return _loads(text)
    except RecursionError:
        raise ValueError("exceeded max depth") from None
    except ValueError as exc:
        if not hasattr(exc, "pos"):  # NaN / Infinity: already in Go's words
            raise
        rest = text[exc.pos :]
        if not rest.strip(" \t\r\n") or exc.msg.startswith("Unterminated"):
            raise ValueError("unexpected end of JSON input") from None
        bad = rest[1:2] if exc.msg == "Invalid \\escape" else rest[0]
        # Go's quoteChar: ' escaped, " bare, the rest as strconv.Quote.
        char = {"'": "\\'", '"': '"'}.get(bad) or go_quote(bad)[1:-1]
        where = {
            "Extra data": "after top-level value",
            "Expecting value": "looking for beginning of value",
            "Expecting property name enclosed in double quotes": (
                "looking for beginning of object key string"
            ),
            "Expecting ':' delimiter": "after object key",
            "Expecting ',' delimiter": "after object key:value pair",
            "Invalid control character at": "in string literal",
            "Invalid \\escape": "in string escape code",
        }.get(exc.msg, "looking for beginning of value")
        raise ValueError(f"invalid character '{char}' {where}") from None


def _go_field(obj: object, key: str, struct: str, go_type: str = "string") -> object:
    """Field ``key`` of a decoded JSON object the way Go's decoder finds it.

    Go matches keys case-insensitively and the last matching key wins; JSON
    ``null`` leaves the field at its zero value (returned as None). A value of
    the wrong kind is Go's UnmarshalTypeError.
    """
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise ValueError(f"json: cannot unmarshal {_json_kind(obj)} into Go value of type {struct}")
    found = None
    lowered = key.lower()
    for name, value in obj.items():
        if name == key or name.lower() == lowered:
            found = value
    if found is None:
        return None
    want = {"string": str, "object": dict}[go_type]
    if not isinstance(found, want):
        raise ValueError(
            f"json: cannot unmarshal {_json_kind(found)} into Go struct field "
            f"{struct}.{key} of type {go_type if go_type == 'string' else 'struct'}"
        )
    return found


def parse_version(version: str) -> tuple[int, int, int]:
    """CNI's ``version.ParseVersion`` (empty = 0.1.0, up to three parts)."""
    if version == "":
        return (0, 1, 0)
    parts = version.split(".")
    if len(parts) >= 4:
        raise ValueError(f"invalid version {go_quote(version)}: too many parts")
    nums = [0, 0, 0]
    for i, (label, part) in enumerate(zip(("major", "minor", "micro"), parts)):
        try:
            if not part.lstrip("+-").isdigit() or not part.isascii():
                raise ValueError
            nums[i] = int(part)
        except ValueError:
            raise ValueError(
                f"failed to convert {label} version part {go_quote(part)}: "
                f"strconv.Atoi: parsing {go_quote(part)}: invalid syntax"
            ) from None
    return (nums[0], nums[1], nums[2])


# --- validation (the library's utils) -----------------------------------------


def _valid_name(name: str) -> bool:
    return bool(name) and name[0] in _ALNUM and all(c in _NAME_CHARS for c in name)


def validate_container_id(cid: str) -> None:
    if not _valid_name(cid):
        raise CNIError(ERR_INVALID_ENV, "invalid characters in containerID", cid)


def validate_interface_name(name: str) -> None:
    if not name:
        raise CNIError(ERR_INVALID_ENV, "interface name is empty")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_IFNAME_LEN:
        raise CNIError(
            ERR_INVALID_ENV,
            "interface name is too long",
            f"interface name should be less than {MAX_IFNAME_LEN + 1} characters",
        )
    if name in (".", ".."):
        raise CNIError(ERR_INVALID_ENV, "interface name is . or ..")
    for ch in name:
        if ch in "/:" or ch in _GO_SPACES:
            raise CNIError(
                ERR_INVALID_ENV, "interface name contains / or : or whitespace characters"
            )


_NAME_STRUCT = 'struct { Name string "json:\\"name\\"" }'
_VERSION_STRUCT = 'struct { CNIVersion string "json:\\"cniVersion\\"" }'


def validate_config(stdin: bytes) -> None:
    try:
        name = _go_field(_go_decode(stdin), "name", _NAME_STRUCT)
    except ValueError as exc:
        raise CNIError(ERR_DECODING, f"error unmarshall network config: {exc}") from None
    if not name:
        raise CNIError(ERR_INVALID_NETCONF, "missing network name")
    if not _valid_name(name):
        raise CNIError(ERR_INVALID_NETCONF, "invalid characters found in network name", name)


def config_version(stdin: bytes) -> str:
    """The config's cniVersion; missing or empty means 0.1.0."""
    try:
        version = _go_field(_go_decode(stdin), "cniVersion", _VERSION_STRUCT)
    except ValueError as exc:
        raise CNIError(ERR_DECODING, f"decoding version from network config: {exc}") from None
    return version or "0.1.0"


def check_version(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        supported = " ".join(go_quote(v) for v in SUPPORTED_VERSIONS)
        raise CNIError(
            ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {go_quote(version)}, plugin supports [{supported}]",
        )


def _at_least(version: str, floor: str) -> bool:
    try:
        return parse_version(version) >= parse_version(floor)
    except ValueError as exc:
        raise CNIError(ERR_DECODING, str(exc)) from None


def check_floor(stdin: bytes, command: str, floor: str) -> None:
    """CHECK needs config >= 0.4.0, GC and STATUS >= 1.1.0 (library rules)."""
    version = config_version(stdin)
    if not _at_least(version, floor):
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    if not any(_at_least(v, version) for v in SUPPORTED_VERSIONS):
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"plugin version does not allow {command}")
    check_version(version)


def _same_ns_as_plugin(path: str) -> bool:
    """True if ``path`` is the plugin's own netns; unopenable paths pass."""
    try:
        theirs = os.stat(path)
        ours = os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def check_not_own_netns(env: dict[str, str]) -> None:
    override = env.get("CNI_NETNS_OVERRIDE", "")
    if override.upper() == "TRUE" or override == "1":
        return
    if _same_ns_as_plugin(env.get("CNI_NETNS", "")):
        raise CNIError(
            ERR_INVALID_NETNS, "plugin's netns and netns from CNI_NETNS should not be the same"
        )


# --- the commands ---------------------------------------------------------------


def _load_netconf(stdin: bytes) -> tuple[str, str]:
    """(cniVersion as given, args.cni.logicNetworkName) with Go's type rules."""
    try:
        conf = _go_decode(stdin)
        version = _go_field(conf, "cniVersion", "NetConf") or ""
        _go_field(conf, "type", "NetConf")
        args = _go_field(conf, "args", "NetConf", "object")
        cni = _go_field(args, "cni", "NetConf.args", "object")
        logic = _go_field(cni, "logicNetworkName", "NetConf.args.cni") or ""
    except ValueError as exc:
        raise CNIError(ERR_INTERNAL, f"failed to load netconf: {exc}") from None
    return str(version), str(logic)


def netns_problem(path: str) -> str | None:
    """Why ``path`` cannot be entered as a network namespace, or None."""
    try:
        os.stat(path)
    except OSError as exc:
        return f"failed to Statfs {go_quote(path)}: {_go_strerror(exc)}"
    from passtcore import netns  # ctypes: only ADD pays for it

    try:
        if netns.is_netns(path):
            return None
    except OSError as exc:
        return f"failed to open {go_quote(path)}: {_go_strerror(exc)}"
    return f"{go_quote(path)} is not a network namespace"


def cmd_add(env: dict[str, str], stdin: bytes, out: list[str], err: list[str]) -> None:
    path = env["CNI_NETNS"]
    reason = netns_problem(path)
    if reason is not None:
        raise CNIError(ERR_INTERNAL, f"failed to open netns {go_quote(path)}: {reason}")
    version, logic = _load_netconf(stdin)
    check_not_own_netns(env)

    from passtcore import netns

    try:
        with netns.entered(path):
            for name, value in SYSCTLS:
                try:
                    netns.write_sysctl(name, value)
                except OSError as exc:
                    raise CNIError(
                        ERR_INTERNAL, f"open {netns.sysctl_path(name)}: {_go_strerror(exc)}"
                    ) from None
    except CNIError:
        raise
    except OSError as exc:  # setns failed: the namespace vanished or is not ours to enter
        raise CNIError(
            ERR_INTERNAL, f"failed to open netns {go_quote(path)}: {_go_strerror(exc)}"
        ) from None

    import time

    err.append(
        time.strftime("%Y/%m/%d %H:%M:%S ")
        + f"setup for logical network {logic} completed successfully\n"
    )
    out.append(go_json({"cniVersion": version} if version else {}, indent=4))


def run(env: dict[str, str], read_stdin: Callable[[], bytes]) -> tuple[int, str, str]:
    """Run one plugin invocation; returns (exit status, stdout, stderr)."""
    out: list[str] = []
    err: list[str] = []
    try:
        command = _dispatch(env, read_stdin, out, err)
    except CNIError as exc:
        return 1, "".join(out) + exc.to_json(), "".join(err)
    except Exception as exc:  # noqa: BLE001 - the runtime must always get a CNI error object
        failure = CNIError(ERR_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        return 1, failure.to_json(), "".join(err)
    if command is None:  # no CNI_COMMAND: the "about" text
        return 0, "", f"{ABOUT}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n"
    return 0, "".join(out), "".join(err)


def _dispatch(
    env: dict[str, str], read_stdin: Callable[[], bytes], out: list[str], err: list[str]
) -> str | None:
    command = env.get("CNI_COMMAND", "")
    missing = []
    for name, needed_by in _ENV_REQUIRED:
        value = env.get(name, "")
        if not value:
            if command in needed_by or name == "CNI_COMMAND":
                missing.append(name)
        elif command in needed_by and name == "CNI_CONTAINERID":
            validate_container_id(value)
        elif command in needed_by and name == "CNI_IFNAME":
            validate_interface_name(value)
    if missing:
        if not command:
            return None
        raise CNIError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")

    if command == "VERSION":
        out.append(
            go_json({"cniVersion": PLUGIN_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)})
            + "\n"
        )
        return command

    try:
        stdin = read_stdin()
    except OSError as exc:
        raise CNIError(ERR_IO, f"error reading from stdin: {_go_strerror(exc)}") from None
    validate_config(stdin)

    if command == "ADD":
        check_version(config_version(stdin))
        cmd_add(env, stdin, out, err)
    elif command == "DEL":
        # Nothing to undo; the namespace may already be gone.
        check_version(config_version(stdin))
        check_not_own_netns(env)
    elif command == "CHECK":
        check_floor(stdin, "CHECK", "0.4.0")
    elif command in ("GC", "STATUS"):
        check_floor(stdin, command, "1.1.0")
    else:
        raise CNIError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    return command


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    while data:
        data = data[os.write(fd, data) :]


def main() -> int:
    """Entry point of ``kubevirt-passt-binding`` (env + stdin as the CNI spec says)."""
    status, out, err = run(dict(os.environ), lambda: sys.stdin.buffer.read() if sys.stdin else b"")
    if err:
        _write(2, err)
    if out:
        _write(1, out)
    return status


if __name__ == "__main__":
    sys.exit(main())
