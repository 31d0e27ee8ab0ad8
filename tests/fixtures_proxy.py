"""Fixtures: a TCP proxy in front of the test sshd that cuts or freezes the stream on cue, and
counts what the client sends, with the time of each chunk.

`tcp_proxy(cut_after=N)` forwards 127.0.0.1:proxy.port to the sshd and, once N bytes went from
the client to the server, closes both sides (a cable pulled mid-transfer). `freeze_after=N`
instead forwards the first N bytes and then holds the stream, in either direction, without
closing: it reads nothing more, so the kernel's buffers fill and TCP's window closes on the
sender, as with a peer that stops answering (reading and dropping would keep the sender's
writes flowing, which no frozen peer does). `proxy.timeline` lists (monotonic time, bytes from
the client so far) per chunk read. Clients reach it with proxy.ssh_args(sshd), which keeps the
sshd's host key.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Iterator, Optional

import pytest

__all__ = ["TcpProxy", "tcp_proxy"]


class TcpProxy:
    """One listening socket; each accepted connection is pumped to the target by two threads."""

    def __init__(self, target_port: int, cut_after: Optional[int] = None,
                 freeze_after: Optional[int] = None) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.freeze_after = freeze_after
        self.bytes_up = 0
        self.timeline: list[tuple[float, int]] = []
        self.cut = threading.Event()
        self.frozen = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def ssh_args(self, sshd) -> list[str]:
        """Options that send a bacpac client to this proxy, host key still checked."""
        return ["-F", sshd.config_path, "-o", f"Port={self.port}",
                "-o", f"HostKeyAlias=[127.0.0.1]:{sshd.port}"]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while not self.cut.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    data = self._count(data)
                elif self.frozen.is_set():
                    data = b""
                dst.sendall(data)
                if self.frozen.is_set():
                    self.cut.wait()  # hold: read nothing more, until the test closes the proxy
        except OSError:
            pass
        self._close_pair(src, dst)

    def _count(self, data: bytes) -> bytes:
        """What of data to forward: all of it, or the bytes before the cut or the freeze."""
        with self._lock:
            before = self.bytes_up
            self.bytes_up += len(data)
            self.timeline.append((time.monotonic(), self.bytes_up))
        for limit, event in ((self.cut_after, self.cut), (self.freeze_after, self.frozen)):
            if limit is not None and self.bytes_up >= limit:
                event.set()
                return data[: max(0, limit - before)]
        return data

    def _close_pair(self, *socks: socket.socket) -> None:
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.cut.set()
        self._listener.close()
        with self._lock:
            self._close_pair(*self._sockets)


@pytest.fixture
def tcp_proxy(sshd) -> Iterator[Callable[..., TcpProxy]]:
    """Factory: tcp_proxy(cut_after=N) or tcp_proxy(freeze_after=N), closed at teardown."""
    proxies: list[TcpProxy] = []

    def make(**kwargs: Optional[int]) -> TcpProxy:
        proxy = TcpProxy(sshd.port, **kwargs)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
