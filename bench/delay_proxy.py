"""A TCP proxy that delays every byte by a fixed time in each direction: a distant server on
loopback (the kernel here has no ``netem``).

    python bench/delay_proxy.py --target 127.0.0.1:8333 [--listen 18333] [--delay-ms 10]

Each connection to the proxy opens one to the target. Bytes read from either side are
written to the other ``delay_s`` after they were read, in the order they came, so a request
and its answer take at least ``2 × delay_s`` more than without the proxy (10 ms each way: a
server "20 ms away"). A half-close is passed on after the same delay. The delay is added,
not the bandwidth limited: a stream runs at full speed once its first bytes are through.

From Python (the benchmark)::

    proxy = delay_proxy.start(target=("127.0.0.1", s3_port), delay_s=0.010)
    ... endpoint_url=f"http://127.0.0.1:{proxy.port}" ...
    proxy.stop()

``start`` raises OSError when the listening port cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

DEFAULT_DELAY_S = 0.010
_READ = 1 << 16
_QUEUED = 1024  # chunks in flight per direction before reading waits (64 MiB at most)


@dataclass
class Counters:
    """What went through the proxy since it started."""

    connections: int = 0
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    failed_connects: int = 0


@dataclass
class DelayProxy:
    """A running proxy: ``port`` is where it listens; ``stop()`` ends it and every
    connection through it. Usable as a context manager."""

    host: str
    port: int
    target: tuple[str, int]
    delay_s: float
    counters: Counters = field(default_factory=Counters)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _stopped: asyncio.Event | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Closes the listener and every connection; returns once they are closed."""
        loop, stopped, thread = self._loop, self._stopped, self._thread
        if loop is None or stopped is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopped.set)
        thread.join(10)
        self._loop = None

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(listen_port: int = 0, *, target: tuple[str, int],
          delay_s: float = DEFAULT_DELAY_S, host: str = "127.0.0.1") -> DelayProxy:
    """Starts a proxy on ``host:listen_port`` (0: a free port) to ``target``, adding
    ``delay_s`` to each direction, in a thread of its own. Returns the running proxy.

    Raises ValueError for a negative delay, OSError when the port cannot be bound.
    """
    if delay_s < 0:
        raise ValueError(f"delay_s must be >= 0, got {delay_s}")
    proxy = DelayProxy(host, listen_port, (target[0], int(target[1])), float(delay_s))
    ready: dict[str, BaseException | None] = {}
    started = threading.Event()
    thread = threading.Thread(target=_run, args=(proxy, ready, started),
                              name=f"delay-proxy-{listen_port}", daemon=True)
    proxy._thread = thread
    thread.start()
    started.wait(10)
    problem = ready.get("error")
    if problem is not None:
        thread.join(5)
        raise problem
    if not started.is_set():
        raise OSError("the delay proxy did not start within 10 s")
    return proxy


def _run(proxy: DelayProxy, ready: dict[str, BaseException | None],
         started: threading.Event) -> None:
    try:
        asyncio.run(_serve(proxy, started))
    except BaseException as exc:  # reported to start(), which re-raises it in its thread
        ready["error"] = exc
        started.set()


async def _serve(proxy: DelayProxy, started: threading.Event) -> None:
    proxy._loop = asyncio.get_running_loop()
    proxy._stopped = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_connection(proxy, reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accepted, proxy.host, proxy.port)
    proxy.port = int(server.sockets[0].getsockname()[1])
    started.set()
    async with server:
        await proxy._stopped.wait()
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _connection(proxy: DelayProxy, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
    _nodelay(client_w)
    try:
        target_r, target_w = await asyncio.open_connection(*proxy.target)
    except OSError:
        proxy.counters.failed_connects += 1
        client_w.close()
        return
    _nodelay(target_w)
    proxy.counters.connections += 1
    try:
        await asyncio.gather(
            _pump(client_r, target_w, proxy.delay_s, proxy.counters, "bytes_up"),
            _pump(target_r, client_w, proxy.delay_s, proxy.counters, "bytes_down"))
    finally:
        for w in (client_w, target_w):
            w.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await w.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float,
                counters: Counters, counter: str) -> None:
    """Copies ``reader`` to ``writer``, each chunk ``delay_s`` after it was read, in order;
    passes end-of-stream on the same way."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUED)

    async def read() -> None:
        try:
            while data := await reader.read(_READ):
                await queue.put((time.monotonic() + delay_s, data))
        except OSError:
            pass  # a reset: end the stream as for EOF
        await queue.put((time.monotonic() + delay_s, b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                return
            writer.write(data)
            setattr(counters, counter, getattr(counters, counter) + len(data))
            await writer.drain()
    except OSError:
        return  # the other side is gone
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--listen", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_S * 1000,
                        help="delay added to each direction (default 10)")
    args = parser.parse_args(argv)
    try:
        proxy = start(args.listen, target=args.target, delay_s=args.delay_ms / 1000,
                      host=args.host)
    except (OSError, ValueError) as exc:
        print(f"delay proxy: {exc}", file=sys.stderr)
        return 1
    print(f"delay proxy on {proxy.host}:{proxy.port} -> {args.target[0]}:{args.target[1]}, "
          f"+{args.delay_ms:g} ms each way", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    proxy.stop()
    c = proxy.counters
    print(f"stopped: {c.connections} connections, {c.bytes_up} bytes up, "
          f"{c.bytes_down} bytes down", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
