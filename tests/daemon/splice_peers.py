"""Real peers for the splice tests: ``python splice_peers.py MODE ADDR PORT [ARGS]``.

Run inside a namespace (``ip netns exec``). Servers print ``ready`` once they
listen; every peer prints one result line and exits by itself (bounded by
socket timeouts), so a test never waits on a hung peer.
"""
from __future__ import annotations

import hashlib
import socket
import struct
import sys
import threading
import time

TIMEOUT = 20.0


def stream(size: int, seed: int) -> bytes:
    """Deterministic, non-repeating-looking payload of ``size`` bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


def family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def listen(addr: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(family(addr), kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family(addr) == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    s.settimeout(TIMEOUT)
    print("ready", flush=True)
    return s


def connect(addr: str, port: int) -> socket.socket:
    s = socket.create_connection((addr, port), timeout=TIMEOUT)
    return s


def recv_all(s: socket.socket) -> bytes:
    parts = []
    while True:
        d = s.recv(1 << 16)
        if not d:
            return b"".join(parts)
        parts.append(d)


def bulk(s: socket.socket, size: int, seed: int) -> None:
    """Send ``size`` bytes then SHUT_WR while receiving until EOF; print what came."""
    data = stream(size, seed)

    def sender() -> None:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=sender)
    t.start()
    got = recv_all(s)
    t.join(TIMEOUT)
    print(f"recv {len(got)} {hashlib.sha256(got).hexdigest()}", flush=True)


def reset_close(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def outcome(s: socket.socket) -> str:
    """Read until EOF or error: 'eof N' / 'reset N' (N bytes received)."""
    n = 0
    try:
        while True:
            d = s.recv(1 << 16)
            if not d:
                return f"eof {n}"
            n += len(d)
    except ConnectionResetError:
        return f"reset {n}"
    except socket.timeout:
        return f"timeout {n}"


def main(argv: list[str]) -> None:
    mode, addr, port = argv[0], argv[1], int(argv[2])
    args = argv[3:]
    if mode == "bulk-server":            # SIZE SEED
        ls = listen(addr, port)
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        bulk(c, int(args[0]), int(args[1]))
    elif mode == "bulk-client":          # SIZE SEED
        bulk(connect(addr, port), int(args[0]), int(args[1]))
    elif mode == "reply-after-eof-server":
        ls = listen(addr, port)
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        got = recv_all(c)
        c.sendall(b"got %d" % len(got))
        c.close()
        print(f"served {len(got)}", flush=True)
    elif mode == "shut-first-client":    # send, SHUT_WR, then read the reply
        s = connect(addr, port)
        s.sendall(b"x" * 100000)
        s.shutdown(socket.SHUT_WR)
        print("reply " + recv_all(s).decode(), flush=True)
    elif mode == "greet-shut-server":    # greeting, SHUT_WR, then read until EOF
        ls = listen(addr, port)
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        c.sendall(b"hello")
        c.shutdown(socket.SHUT_WR)
        print("got " + recv_all(c).decode(), flush=True)
        c.close()
    elif mode == "after-eof-client":     # read until EOF, then still send
        s = connect(addr, port)
        greeting = recv_all(s)
        time.sleep(0.2)
        s.sendall(b"after-eof")
        s.shutdown(socket.SHUT_WR)
        rest = recv_all(s)
        print(f"greeting {greeting.decode()} rest {len(rest)}", flush=True)
    elif mode == "rst-server":           # accept, read a little, reset
        ls = listen(addr, port)
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        c.recv(100)
        reset_close(c)
        print("reset sent", flush=True)
    elif mode == "outcome-server":       # accept, report how the connection ended
        ls = listen(addr, port)
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        print(outcome(c), flush=True)
    elif mode == "ping-client":          # connect, send, report how it ended + time
        t0 = time.monotonic()
        try:
            # the relay may reset before connect() returns (the RST of an accepted
            # connection whose host side was refused arrives with the handshake)
            s = connect(addr, port)
            s.sendall(b"ping")
        except (BrokenPipeError, ConnectionResetError):
            print(f"reset 0 {time.monotonic() - t0:.3f}", flush=True)
            return
        print(f"{outcome(s)} {time.monotonic() - t0:.3f}", flush=True)
    elif mode == "abort-client":         # connect, send, reset
        s = connect(addr, port)
        s.sendall(b"x" * 1000)
        time.sleep(0.3)
        reset_close(s)
        print("aborted", flush=True)
    elif mode == "echo-server":          # many connections, echo each until EOF
        ls = listen(addr, port)
        ls.settimeout(None)

        def serve(c: socket.socket) -> None:
            c.settimeout(TIMEOUT)
            try:
                while True:
                    d = c.recv(1 << 16)
                    if not d:
                        break
                    c.sendall(d)
                c.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            finally:
                c.close()

        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    elif mode == "many-clients":         # COUNT concurrent echo round trips
        count = int(args[0])
        socks = [connect(addr, port) for _ in range(count)]
        for i, s in enumerate(socks):
            s.sendall(b"message %d" % i)
            s.shutdown(socket.SHUT_WR)
        ok = sum(recv_all(s) == b"message %d" % i for i, s in enumerate(socks))
        print(f"ok {ok}", flush=True)
    elif mode == "stall-server":         # accept, do not read for SECONDS, then drain
        ls = listen(addr, port)
        c, _ = ls.accept()
        c.settimeout(TIMEOUT)
        time.sleep(float(args[0]))
        got = recv_all(c)
        print(f"recv {len(got)} {hashlib.sha256(got).hexdigest()}", flush=True)
    elif mode == "flood-client":         # send non-blocking for SECONDS, report, then all
        s = connect(addr, port)
        s.setblocking(False)
        chunk = stream(1 << 16, 7)
        view = memoryview(chunk * 2)
        sent = off = 0
        deadline = time.monotonic() + float(args[0])
        while time.monotonic() < deadline and sent < 512 << 20:
            try:
                n = s.send(view[off:off + len(chunk)])
            except BlockingIOError:
                time.sleep(0.01)
                continue
            sent += n
            off = (off + n) % len(chunk)
        s.setblocking(True)
        s.settimeout(TIMEOUT)
        print(f"accepted {sent}", flush=True)
        s.shutdown(socket.SHUT_WR)
        recv_all(s)
        whole, rest = divmod(sent, len(chunk))
        digest = hashlib.sha256(chunk * whole + chunk[:rest]).hexdigest()
        print(f"total {sent} {digest}", flush=True)
    elif mode == "udp-echo":             # reply "PEERADDR PEERPORT|data"
        s = listen(addr, port, socket.SOCK_DGRAM)
        s.settimeout(None)
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(f"{peer[0]} {peer[1]}|".encode() + data, peer)
    elif mode == "udp-client":           # send, print reply, its source and our port
        s = socket.socket(family(addr), socket.SOCK_DGRAM)
        s.settimeout(5)
        s.bind((addr, 0))
        s.sendto(b"ping", (addr, port))
        try:
            data, src = s.recvfrom(65535)
        except socket.timeout:
            print("timeout", flush=True)
            return
        print(f"reply {data.decode()} from {src[0]} {src[1]} me {s.getsockname()[1]}",
              flush=True)
    elif mode == "hold":                 # TCP (or UDP with 'udp') bound until killed
        kind = socket.SOCK_DGRAM if args and args[0] == "udp" else socket.SOCK_STREAM
        ls = listen(addr, port, kind)
        time.sleep(120)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
