"""``passtcore-sidecar``: KubeVirt's passt network binding hook sidecar.

A gRPC server on a unix socket (default ``/var/run/kubevirt-hooks/passt.sock``,
``--socket PATH`` to change it) that virt-launcher discovers and calls
(kubevirt-binding.md sections 1 and 3). It serves:

* ``kubevirt.hooks.info.Info/Info``: name ``network-passt-binding``, versions
  ``["v1alpha3", "v1alpha2"]``, hook points ``OnDefineDomain`` and ``Shutdown``
  (priority 0). Both Callbacks versions are registered (section 5.2).
* ``kubevirt.hooks.v1alpha3.Callbacks`` and ``kubevirt.hooks.v1alpha2.Callbacks``:
  ``OnDefineDomain`` rewrites the domain with ``passtcore.kubevirt.domain``;
  ``PreCloudInitIso`` passes the cloud-init data through; ``Shutdown``
  (v1alpha3) asks the process to stop. Errors reach the client as status
  UNKNOWN with upstream's message text; the server keeps serving.

Environment:

* ``NETWORK_BINDING_PLUGIN_NAME``: the binding name VMI interfaces must use
  (empty/unset: ``passt``); set by virt-controller.
* ``PASSTCORE_BINDING_FLAVOUR``: ``vhostuser`` (default: ``<interface
  type="vhostuser">`` and the shared ``<memoryBacking>`` rule, upstream's
  current behaviour) or ``stream`` (``<interface type="user">``, memoryBacking
  untouched: for libvirt/passt without vhost-user and passtcore-run's socket
  mode). Any other value is refused at start-up (exit 1).

Lifetime: a stale socket file (nothing listening) is removed before binding;
if another process is listening there, or the path is not a socket, or binding
fails, the process logs why and exits 1. ``Shutdown`` (idempotent) and
SIGTERM/SIGINT/SIGHUP/SIGQUIT stop the server gracefully (in-flight calls
complete), remove the socket file and exit 0. Logs go to stderr. Without
grpcio/protobuf (``pip install passtcore`` without the ``sidecar`` extra) it
prints one line saying what to install and exits 1; ``--help`` and
``--version`` work without them.

Memory: only grpc, protobuf and the stdlib are imported (``import passtcore``
is lazy; no numpy, no kernels), keeping the RSS below the 64 MB limit of
KubeVirt support containers (measured by benches/sidecar_rss.py: ~43 MB
serving ordinary domains). Domains may be up to the 4 MiB message limit, so
OnDefineDomain takes and returns raw messages (``decode_define_params`` /
``encode_define_result``, checked against the generated classes in the tests)
instead of holding extra protobuf copies, and glibc is told to unmap big
buffers when they are freed (``limit_heap_growth``).
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import stat
import sys
import threading
from concurrent import futures
from typing import Any

DEFAULT_SOCKET = "/var/run/kubevirt-hooks/passt.sock"
HOOK_NAME = "network-passt-binding"
VERSIONS = ("v1alpha3", "v1alpha2")
HOOK_POINTS = ("OnDefineDomain", "Shutdown")
FLAVOUR_ENV = "PASSTCORE_BINDING_FLAVOUR"
BINDING_NAME_ENV = "NETWORK_BINDING_PLUGIN_NAME"
MAX_MESSAGE = 4 * 1024 * 1024  # gRPC-Go's default, both ways
GRACE_SECONDS = 10.0

log = logging.getLogger("passtcore-sidecar")


class SocketInUse(Exception):
    """The socket path is taken by a live server or is not a socket."""


def prepare_socket_path(path: str) -> None:
    """Remove a stale socket file at ``path``; refuse a live one or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except OSError as err:
        if err.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketInUse(f"cannot probe existing socket {path}: {err.strerror}") from None
        log.info("removing stale socket %s", path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    finally:
        probe.close()
    raise SocketInUse(f"another process is already listening on {path}")


class WireError(ValueError):
    """A message that is not valid protobuf wire format."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_define_params(raw: bytes) -> tuple[memoryview, memoryview]:
    """``OnDefineDomainParams`` -> (domainXML, vmi) as zero-copy views into ``raw``.

    The domain can be 4 MiB: decoding it with the generated class would hold
    two more copies (the message, then the field's bytes). This follows the
    same wire rules (last occurrence of a field wins, unknown fields skipped)
    and is checked against the generated class in the tests.
    """
    buf = memoryview(raw)
    fields = {1: buf[0:0], 2: buf[0:0]}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise WireError("truncated length-delimited field")
            if number in fields:
                fields[number] = buf[pos:pos + size]
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise WireError("truncated field")
    return fields[1], fields[2]


def encode_define_result(domain_xml: bytes) -> bytes:
    """``OnDefineDomainResult{domainXML}`` in wire format (one copy of the document)."""
    if not domain_xml:
        return b""  # proto3: an empty bytes field is not written
    size, head = len(domain_xml), bytearray(b"\x0a")
    while True:
        byte = size & 0x7F
        size >>= 7
        head.append(byte | (0x80 if size else 0))
        if not size:
            break
    return b"".join((head, domain_xml))


class Sidecar:
    """The hook services and the stop logic around one grpc.Server."""

    def __init__(self, binding_name: str, flavour: str) -> None:
        self.binding_name = binding_name
        self.flavour = flavour
        self.stop_requested = threading.Event()
        self.stop_reason = ""

    def request_stop(self, reason: str) -> None:
        """Idempotent: the first reason is kept, later calls are no-ops."""
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            self.stop_requested.set()

    # --- handlers (request, grpc context) -> response

    def info(self, request: Any, context: Any) -> Any:
        from passtcore.kubevirt.proto import api_info_pb2 as pb

        return pb.InfoResult(name=HOOK_NAME, versions=list(VERSIONS),
                             hookPoints=[pb.HookPoint(name=n, priority=0) for n in HOOK_POINTS])

    def on_define_domain(self, version: str) -> Any:
        """The handler works on the raw messages (decode_define_params / encode_define_result)."""
        from passtcore.kubevirt import domain

        def handler(request: bytes, context: Any) -> bytes:
            import grpc

            try:
                domain_view, vmi = decode_define_params(request)
            except WireError as err:
                context.abort(grpc.StatusCode.INTERNAL, f"bad OnDefineDomainParams: {err}")
            domain_xml = bytes(domain_view)
            del domain_view, request
            try:
                new_xml = domain.on_define_domain(vmi, domain_xml, self.binding_name, self.flavour)
            except domain.HookError as err:
                log.error("%s OnDefineDomain failed: %s", version, err)
                context.abort(grpc.StatusCode.UNKNOWN, str(err))
            except Exception as err:  # a bug must not take the server down
                log.exception("%s OnDefineDomain: internal error", version)
                context.abort(grpc.StatusCode.UNKNOWN, f"internal error: {err}")
            log.info("%s OnDefineDomain: domain updated (%d -> %d bytes)", version,
                     len(domain_xml), len(new_xml))
            del domain_xml
            return encode_define_result(new_xml)
        return handler

    def pre_cloud_init_iso(self, pb: Any) -> Any:
        def handler(request: Any, context: Any) -> Any:
            return pb.PreCloudInitIsoResult(cloudInitData=request.cloudInitData)
        return handler

    def shutdown(self, request: Any, context: Any) -> Any:
        from passtcore.kubevirt.proto import api_v1alpha3_pb2 as pb

        log.info("Shutdown requested")
        self.request_stop("Shutdown RPC")
        return pb.ShutdownResult()

    def handlers(self) -> list[Any]:
        """Generic handlers for the three services (method paths of 1.2)."""
        import grpc

        from passtcore.kubevirt.proto import api_info_pb2, api_v1alpha2_pb2, api_v1alpha3_pb2

        def unary(fn: Any, req: Any, resp: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString)

        out = [grpc.method_handlers_generic_handler("kubevirt.hooks.info.Info", {
            "Info": unary(self.info, api_info_pb2.InfoParams, api_info_pb2.InfoResult)})]
        for version, pb in (("v1alpha3", api_v1alpha3_pb2), ("v1alpha2", api_v1alpha2_pb2)):
            methods = {
                # raw bytes in and out: no request/response (de)serializer
                "OnDefineDomain": grpc.unary_unary_rpc_method_handler(self.on_define_domain(version)),
                "PreCloudInitIso": unary(self.pre_cloud_init_iso(pb), pb.PreCloudInitIsoParams,
                                         pb.PreCloudInitIsoResult),
            }
            if version == "v1alpha3":
                methods["Shutdown"] = unary(self.shutdown, pb.ShutdownParams, pb.ShutdownResult)
            out.append(grpc.method_handlers_generic_handler(f"kubevirt.hooks.{version}.Callbacks", methods))
        return out


def limit_heap_growth() -> None:
    """Make glibc return big request buffers to the kernel as soon as they are freed.

    A domain can be up to 4 MiB and each call holds a few copies of it; with
    glibc's dynamic mmap threshold those end up in the heap after the first
    big call and the RSS stays high. A fixed threshold (256 KiB) keeps them in
    their own mappings, unmapped on free.
    """
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


INSTALL_HINT = "pip install 'passtcore[sidecar]'"


def missing_runtime() -> str:
    """What keeps the server from starting, in one line ('' when grpcio and protobuf are usable).

    grpcio and protobuf come with the ``sidecar`` extra, not with a plain
    ``pip install passtcore``. The generated modules are imported here too:
    they refuse a protobuf runtime older than the one they were compiled for.
    """
    missing = []
    for module, dist in (("grpc", "grpcio"), ("google.protobuf", "protobuf")):
        try:
            __import__(module)
        except ImportError:
            missing.append(dist)
    if missing:
        return f"needs {' and '.join(missing)}: {INSTALL_HINT}"
    try:
        from passtcore.kubevirt.proto import api_info_pb2, api_v1alpha2_pb2, api_v1alpha3_pb2  # noqa: F401
    except Exception as err:  # ImportError or protobuf's VersionError: an unsupported runtime
        detail = " ".join(str(err).split()) or type(err).__name__
        return (f"the installed grpcio/protobuf do not fit the generated modules ({detail}): "
                f"{INSTALL_HINT.replace('install', 'install --upgrade', 1)}")
    return ""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="passtcore-sidecar",
        description="KubeVirt hook sidecar of the passt network binding: rewrites the VM's "
                    "domain XML so that its pod network interface uses the passt backend.",
        epilog=f"Environment: {BINDING_NAME_ENV} (binding name, default 'passt'), "
               f"{FLAVOUR_ENV}=vhostuser|stream (interface flavour, default vhostuser).")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                        help=f"unix socket to serve on (default {DEFAULT_SOCKET})")
    parser.add_argument("--version", action="version", version=_version())
    return parser.parse_args(argv)


def _version() -> str:
    import passtcore

    return f"passtcore-sidecar {passtcore.__version__}"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    problem = missing_runtime()
    if problem:
        print(f"passtcore-sidecar: {problem}", file=sys.stderr)
        return 1
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s passtcore-sidecar %(levelname)s: %(message)s")
    flavour = os.environ.get(FLAVOUR_ENV, "") or "vhostuser"
    if flavour not in ("vhostuser", "stream"):
        log.error("%s=%r is not valid: use 'vhostuser' or 'stream'", FLAVOUR_ENV, flavour)
        return 1
    binding_name = os.environ.get(BINDING_NAME_ENV, "") or "passt"
    path = os.path.abspath(args.socket)
    try:
        prepare_socket_path(path)
    except SocketInUse as err:
        log.error("%s", err)
        return 1

    limit_heap_growth()
    import grpc

    sidecar = Sidecar(binding_name, flavour)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, lambda num, _frame: sidecar.request_stop(signal.Signals(num).name))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="hook"),
        handlers=sidecar.handlers(),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                 ("grpc.max_send_message_length", MAX_MESSAGE)])
    try:
        server.add_insecure_port("unix:" + path)
        server.start()
        ino = os.lstat(path).st_ino
    except (RuntimeError, OSError) as err:
        log.error("failed to listen on %s: %s", path, err)
        server.stop(None)
        return 1
    log.info("serving %s (binding %r, flavour %s, hook API %s)", path, binding_name, flavour,
             ", ".join(VERSIONS))
    try:
        while not sidecar.stop_requested.wait(1.0):
            pass
        log.info("stopping (%s)", sidecar.stop_reason)
        server.stop(GRACE_SECONDS).wait(GRACE_SECONDS + 1)
    finally:
        _remove_socket(path, ino)
    log.info("stopped, socket %s removed", path)
    return 0


def _remove_socket(path: str, ino: int) -> None:
    """Unlink our socket file, not one another process bound since."""
    try:
        if os.lstat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass


if __name__ == "__main__":
    sys.exit(main())
