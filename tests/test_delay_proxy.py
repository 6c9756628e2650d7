"""bench/delay_proxy.py: a TCP proxy that puts a server "2 × delay" away, bytes unchanged."""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import delay_proxy

ROOT = Path(__file__).resolve().parents[1]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := sock.recv(1 << 16):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # EOF answers EOF: a half-close must come through


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = _Server(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "127.0.0.1", int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        data = sock.recv(min(1 << 16, n - got))
        assert data, f"connection ended after {got} of {n} bytes"
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _round_trip(port: int, payload: bytes = b"ping") -> float:
    with _connect(port) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        assert _recv_exactly(sock, len(payload)) == payload
        return time.monotonic() - started


def test_a_round_trip_takes_at_least_twice_the_delay(echo: tuple[str, int]) -> None:
    direct = min(_round_trip(echo[1]) for _ in range(3))
    with delay_proxy.start(target=echo, delay_s=0.05) as proxy:
        assert proxy.port > 0
        through = [_round_trip(proxy.port) for _ in range(3)]
    assert direct < 0.05  # the echo server itself answers at once
    assert min(through) >= 0.10, through
    assert max(through) < 1.0, through  # a delay, not a hang
    assert proxy.counters.connections == 3
    assert proxy.counters.bytes_up == proxy.counters.bytes_down == 3 * len(b"ping")


def test_bytes_arrive_unchanged_in_order_in_both_directions(echo: tuple[str, int]) -> None:
    payloads = [os.urandom(3 << 20), os.urandom(1 << 20)]
    received: dict[int, bytes] = {}

    def send(i: int, payload: bytes) -> None:
        with _connect(proxy.port) as sock:
            reply: list[bytes] = []
            reader = threading.Thread(
                target=lambda: reply.append(_recv_exactly(sock, len(payload))))
            reader.start()
            for at in range(0, len(payload), 7919):  # odd-sized writes, many chunks
                sock.sendall(payload[at:at + 7919])
            reader.join(60)
            received[i] = reply[0]

    with delay_proxy.start(target=echo, delay_s=0.005) as proxy:
        threads = [threading.Thread(target=send, args=(i, p)) for i, p in enumerate(payloads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    # two connections at once: neither mixed with the other, nothing lost or reordered
    assert received == dict(enumerate(payloads))


def test_the_delay_is_added_once_not_once_per_chunk(echo: tuple[str, int]) -> None:
    """Pipelined writes overlap: 30 messages take about one round trip more, not 30."""
    with delay_proxy.start(target=echo, delay_s=0.1) as proxy, _connect(proxy.port) as sock:
        started = time.monotonic()
        for i in range(30):
            sock.sendall(bytes([i]) * 1000)
            time.sleep(0.005)  # separate chunks on the wire
        data = _recv_exactly(sock, 30_000)
        elapsed = time.monotonic() - started
    assert data == b"".join(bytes([i]) * 1000 for i in range(30))
    assert 0.2 <= elapsed < 2.0, elapsed  # serialised per chunk it would take 6 s


def test_end_of_stream_is_passed_on(echo: tuple[str, int]) -> None:
    with delay_proxy.start(target=echo, delay_s=0.02) as proxy, _connect(proxy.port) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert _recv_exactly(sock, 10) == b"last words"
        assert sock.recv(10) == b""  # the echo server's EOF, through the proxy


def test_an_unreachable_target_closes_the_client_and_stop_closes_the_port() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]  # bound, never listening: connections are refused
        proxy = delay_proxy.start(target=("127.0.0.1", dead), delay_s=0.01)
        with _connect(proxy.port) as sock:
            assert sock.recv(10) == b""
        assert proxy.counters.failed_connects == 1
        proxy.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="delay_s"):
        delay_proxy.start(target=("127.0.0.1", 9), delay_s=-1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            delay_proxy.start(taken.getsockname()[1], target=("127.0.0.1", 9))


def test_the_command_line_proxy(echo: tuple[str, int]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "bench/delay_proxy.py", "--target", f"{echo[0]}:{echo[1]}",
         "--delay-ms", "40"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"delay proxy on 127\.0\.0\.1:(\d+) -> .*\+40 ms each way", line)
        assert match, line
        assert _round_trip(int(match.group(1)), b"hello") >= 0.08
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "stopped: 1 connections, 5 bytes up, 5 bytes down" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = subprocess.run([sys.executable, "bench/delay_proxy.py", "--target", "nohost"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr
