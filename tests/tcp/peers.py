"""Real TCP/UDP peers run in the test namespaces (``python peers.py MODE ...``).

Each server prints ``READY`` once it listens, then one result line; clients
print one result line. Payloads are deterministic pseudo-random streams so that
both ends can compare SHA-256 digests of exactly what crossed the translator.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
import resource
import socket
import struct
import sys
import time

CHUNK = 1 << 20


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def stream(size: int, seed: int):
    rnd = random.Random(seed)
    left = size
    while left:
        n = min(CHUNK, left)
        yield rnd.randbytes(n)
        left -= n


def listen(addr: str, port: int, backlog: int = 128) -> socket.socket:
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(backlog)
    print("READY", flush=True)
    return s


def send_all(sock: socket.socket, size: int, seed: int) -> str:
    h = hashlib.sha256()
    for block in stream(size, seed):
        h.update(block)
        sock.sendall(block)
    return h.hexdigest()


def recv_all(sock: socket.socket) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    buf = bytearray(CHUNK)
    while True:
        k = sock.recv_into(buf)
        if not k:
            return n, h.hexdigest()
        h.update(memoryview(buf)[:k])
        n += k


def connect(host: str, port: int, timeout: float = 30) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "send-server":          # ADDR PORT SIZE SEED
        s = listen(args[0], int(args[1]))
        c, _ = s.accept()
        t = time.monotonic()
        digest = send_all(c, int(args[2]), int(args[3]))
        c.shutdown(socket.SHUT_WR)
        c.settimeout(60)
        c.recv(1)
        print(f"{int(args[2])} {digest} {time.monotonic() - t:.3f}", flush=True)
    elif mode == "recv-server":        # ADDR PORT
        s = listen(args[0], int(args[1]))
        c, _ = s.accept()
        t = time.monotonic()
        n, digest = recv_all(c)
        print(f"{n} {digest} {time.monotonic() - t:.3f}", flush=True)
    elif mode == "send-client":        # HOST PORT SIZE SEED
        c = connect(args[0], int(args[1]), 120)
        t = time.monotonic()
        digest = send_all(c, int(args[2]), int(args[3]))
        c.shutdown(socket.SHUT_WR)
        c.recv(1)
        print(f"{int(args[2])} {digest} {time.monotonic() - t:.3f}", flush=True)
    elif mode == "recv-client":        # HOST PORT
        c = connect(args[0], int(args[1]), 120)
        t = time.monotonic()
        n, digest = recv_all(c)
        print(f"{n} {digest} {time.monotonic() - t:.3f}", flush=True)
    elif mode == "connect-time":       # HOST PORT -> "refused SECONDS" / "connected SECONDS"
        t = time.monotonic()
        try:
            connect(args[0], int(args[1]), 10).close()
            print(f"connected {time.monotonic() - t:.3f}")
        except OSError as exc:
            print(f"{type(exc).__name__} {time.monotonic() - t:.3f}")
    elif mode == "peer-server":        # ADDR PORT: tell each client what we see
        s = listen(args[0], int(args[1]))
        while True:
            c, peer = s.accept()
            c.sendall(f"{peer[0]} {peer[1]} {c.getsockname()[0]}\n".encode())
            c.close()
    elif mode == "line-client":        # HOST PORT -> first line
        c = connect(args[0], int(args[1]), 10)
        print(c.makefile().readline().strip())
    elif mode == "echo-server":        # ADDR PORT (asyncio, many connections)
        asyncio.run(echo_server(args[0], int(args[1])))
    elif mode == "echo-clients":       # HOST PORT N SIZE
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        asyncio.run(echo_clients(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif mode == "halfclose-server":   # ADDR PORT: read to EOF, then answer, then close
        s = listen(args[0], int(args[1]))
        c, _ = s.accept()
        n, digest = recv_all(c)
        c.sendall(f"got {n} {digest}\n".encode())
        c.close()
    elif mode == "halfclose-client":   # HOST PORT SIZE: send, SHUT_WR, read the answer
        c = connect(args[0], int(args[1]))
        digest = send_all(c, int(args[2]), 7)
        c.shutdown(socket.SHUT_WR)
        answer = c.makefile().readline().strip()
        print("match" if answer == f"got {int(args[2])} {digest}" else f"mismatch {answer}")
    elif mode == "shut-server":        # ADDR PORT: SHUT_WR at once, then read to EOF
        s = listen(args[0], int(args[1]))
        c, _ = s.accept()
        c.sendall(b"early\n")
        c.shutdown(socket.SHUT_WR)
        n, digest = recv_all(c)
        print(f"{n} {digest}", flush=True)
    elif mode == "shut-client":        # HOST PORT SIZE: read EOF first, then send
        c = connect(args[0], int(args[1]))
        got = c.recv(100)
        assert c.recv(100) == b""
        digest = send_all(c, int(args[2]), 9)
        c.close()
        print(f"{got.decode().strip()} {args[2]} {digest}")
    elif mode == "rst-server":         # ADDR PORT: accept, reset at once
        s = listen(args[0], int(args[1]))
        c, _ = s.accept()
        c.recv(10)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    elif mode == "rst-client":         # HOST PORT: send, wait for the reset
        c = connect(args[0], int(args[1]))
        c.sendall(b"hi")
        try:
            data = c.recv(10)
            print(f"eof {data!r}")
        except ConnectionResetError:
            print("reset")
    elif mode == "wait-reset-server":  # ADDR PORT: what happens to our recv
        s = listen(args[0], int(args[1]))
        c, _ = s.accept()
        c.settimeout(10)
        try:
            data = c.recv(10)
            data2 = c.recv(10)
            print(f"eof {data!r} {data2!r}", flush=True)
        except ConnectionResetError:
            print("reset", flush=True)
    elif mode == "reset-client":       # HOST PORT: connect, send, abort
        c = connect(args[0], int(args[1]))
        time.sleep(0.2)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        print("aborted")
    elif mode == "udp-echo":           # ADDR PORT
        s = socket.socket(family_of(args[0]), socket.SOCK_DGRAM)
        s.bind((args[0], int(args[1])))
        print("READY", flush=True)
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(data, peer)
    elif mode == "udp-client":         # HOST PORT MSG
        s = socket.socket(family_of(args[0]), socket.SOCK_DGRAM)
        s.settimeout(3)
        for _ in range(3):
            s.sendto(args[2].encode(), (args[0], int(args[1])))
            try:
                data, peer = s.recvfrom(65535)
                print(f"{data.decode()} {peer[0]} {peer[1]}")
                return
            except socket.timeout:
                continue
        print("timeout")
    elif mode == "dns-server":         # ADDR PORT: answer every A query with 203.0.113.7
        from scapy.layers.dns import DNS, DNSRR
        s = socket.socket(family_of(args[0]), socket.SOCK_DGRAM)
        s.bind((args[0], int(args[1])))
        print("READY", flush=True)
        while True:
            data, peer = s.recvfrom(65535)
            q = DNS(data)
            a = DNS(id=q.id, qr=1, aa=1, rd=q.rd, qd=q.qd,
                    an=DNSRR(rrname=q.qd.qname, type="A", ttl=60, rdata="203.0.113.7"))
            s.sendto(bytes(a), peer)
    elif mode == "dns-query":          # SERVER NAME
        from scapy.layers.dns import DNS, DNSQR
        s = socket.socket(family_of(args[0]), socket.SOCK_DGRAM)
        s.settimeout(3)
        q = DNS(id=4242, rd=1, qd=DNSQR(qname=args[1], qtype="A"))
        for _ in range(3):
            s.sendto(bytes(q), (args[0], 53))
            try:
                data, peer = s.recvfrom(65535)
            except socket.timeout:
                continue
            r = DNS(data)
            print(f"{r.id} {r.an.rdata} {peer[0]} {peer[1]}")
            return
        print("timeout")
    else:
        raise SystemExit(f"unknown mode {mode}")


async def echo_server(addr: str, port: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, addr, port, backlog=4096)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


async def echo_clients(host: str, port: int, n: int, size: int) -> None:
    payload = random.Random(1).randbytes(size)
    sem = asyncio.Semaphore(n)

    async def one(i: int) -> bool:
        async with sem:
            for attempt in range(3):
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                    break
                except OSError:
                    await asyncio.sleep(0.2 * (attempt + 1))
            else:
                return False
            writer.write(payload)
            await writer.drain()
            got = await reader.readexactly(size)
            writer.close()
            return got == payload

    t = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 240)
    print(f"ok {sum(results)} of {n} {time.monotonic() - t:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
