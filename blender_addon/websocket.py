"""Progress from a ComfyUI server over its websocket: a small read-only RFC 6455 client (stdlib only;
Blender's Python has no websocket package)."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import urllib.parse


# ----------------------------------------------------------------------------------------------
# progress over the websocket (stdlib: a small RFC 6455 client that only reads)
# ----------------------------------------------------------------------------------------------
class WebSocket:
    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        sock = socket.create_connection((parts.hostname, port), timeout=timeout)
        if parts.scheme == "https":
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())  # fmt: skip
        self.sock, self.buf = sock, b""
        head = self._until(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            sock.close()
            raise OSError("no websocket upgrade")

    def _until(self, mark: bytes) -> bytes:
        while mark not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("websocket closed")
            self.buf += chunk
        head, self.buf = self.buf.split(mark, 1)
        return head

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(payload)))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self, timeout: float) -> dict | None:
        """The next JSON text message (binary previews skipped), or None when none came within ``timeout``.

        OSError when the socket breaks (a timeout inside a frame counts as broken)."""
        message, kind = b"", None
        while True:
            self.sock.settimeout(timeout)
            try:
                b0, b1 = self._exact(2)
            except TimeoutError:
                if not message:
                    return None
                raise
            self.sock.settimeout(max(timeout, 5))  # a frame that started is read whole
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                raise OSError("websocket closed")
            if opcode == 9:
                self._send(10, payload)
                continue
            if opcode in (1, 2):
                message, kind = payload, opcode
            elif opcode == 0:
                message += payload
            else:
                continue
            if b0 & 0x80:
                if kind == 1:
                    return json.loads(message.decode("utf-8", errors="replace"))
                message, kind = b"", None

    def close(self) -> None:
        try:
            self._send(8)
        except OSError:
            pass
        self.sock.close()
