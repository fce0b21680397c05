#!/usr/bin/env python3
"""Sends text messages on one WebSocket and prints each answer on a line, in
the order they arrive. Standard library only (the kind suite's runner has
python3 and nothing else to install).

    ws-call.py ws://127.0.0.1:18084/v1/ordered '{"id":"a","input":{}}' ...

Exit status: 0 when every message got an answer within 30 s, else 1.
"""
import base64
import os
import socket
import struct
import sys
import urllib.parse


def frame(text: str) -> bytes:
    """A masked, final text frame (clients must mask, RFC 6455 5.3)."""
    data = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    n = len(data)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def read_frame(sock: socket.socket):
    b0, b1 = read_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    return b0 & 0x0F, read_exact(sock, n)


def main() -> int:
    url = urllib.parse.urlparse(sys.argv[1])
    messages = sys.argv[2:]
    sock = socket.create_connection((url.hostname, url.port or 80), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += read_exact(sock, 1)
    if not head.startswith(b"HTTP/1.1 101"):
        print(head.decode(errors="replace").splitlines()[0], file=sys.stderr)
        return 1
    for m in messages:
        sock.sendall(frame(m))
    answers = 0
    while answers < len(messages):
        opcode, payload = read_frame(sock)
        if opcode == 0x1:
            print(payload.decode())
            answers += 1
        elif opcode == 0x9:  # ping: answer with a masked pong
            mask = os.urandom(4)
            body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + mask + body)
        elif opcode == 0x8:
            print(f"closed: {payload[:2].hex()}", file=sys.stderr)
            return 1
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
