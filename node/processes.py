"""Running the node: one process, or several worker processes sharing the DIMSE port.

One Python process is bound to one core by the GIL, and a C-STORE is acknowledged only
once durable, so with several senders at once the node scales by processes: each worker
opens its own store and index connections and binds the port with SO_REUSEPORT; the kernel
spreads new associations over them. The index (SQLite WAL or PostgreSQL) and the object
store serialise what must be serialised.

Signals: SIGINT/SIGTERM stop a process; SIGHUP makes every process of the node (the receivers,
the processing workers, the web server's process) read the key file again: the parent reloads
its own keyring and passes the signal to its children. Children are started with SIGHUP
ignored (an ignored signal stays ignored across exec) until they install their handler, so a
SIGHUP during start-up cannot kill one. Reloading also happens without SIGHUP: a keyring checks
its file before every write and on an unknown key id (node.crypto.keyring), so `keys rotate`
needs no signal; SIGHUP forces it (a key file restored with the same time and size).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from threadpoolctl import threadpool_limits

from node import logs, metrics, wiring
from node.core import Core
from node.crypto.keyring import Keyring
from node.errors import KeyringError
from node.settings import Settings
from node.store.modes import warn_exposed
from node.store.sweep import sweep_temp_files

log = logging.getLogger("support_node")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PROCESSING_NICE = 10
UPLOAD_NICE = 5
UPLOAD = ("upload",)  # the uploader's place among the pool's processes


def stop_event() -> threading.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in _STOP_SIGNALS:
        signal.signal(sig, lambda *_: stop.set())
    return stop


def reload_keys_on_hangup(keyring: Keyring) -> None:
    """On SIGHUP: reload ``keyring`` from its file and pass SIGHUP on to this process's
    children (worker processes). The work runs in a thread, not in the signal handler, which
    may interrupt the main thread anywhere (inside logging's locks, say)."""
    def reload() -> None:
        try:
            keyring.refresh(force=True)
            log.info("SIGHUP: key file read again; key %d is active", keyring.active.id)
        except KeyringError as exc:
            log.error("SIGHUP: key file not read again: %s", exc)
        for child in multiprocessing.active_children():
            if child.pid is not None:
                try:
                    os.kill(child.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGHUP,
                  lambda *_: threading.Thread(target=reload, name="keys-reload",
                                              daemon=True).start())


@contextmanager
def _hangup_ignored() -> Iterator[None]:
    """SIGHUP ignored while child processes are started: they inherit "ignore" until they
    install their own handler."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def at_start(core: Core) -> None:
    """Once per start of the node: warn about a home that others can read, and sweep stale
    temporary files of the store (in the background: it walks a local store)."""
    warn_exposed(core.settings)
    threading.Thread(target=_sweep, args=(core,), name="sweep", daemon=True).start()


def _sweep(core: Core) -> None:
    try:
        sweep_temp_files(core.fs)
    except OSError as exc:
        log.warning("could not sweep temporary files: %s", exc.strerror)


def serve_one(settings: Settings, ready: Callable[[int, str | None], None],
              shared_port: bool = False,
              stop: threading.Event | None = None,
              watch: Callable[[], None] | None = None, web: bool = False) -> None:
    """Serves DIMSE (and, with ``web``, HTTP) in this process until SIGINT/SIGTERM (or
    ``stop``); calls ``ready(dimse_port, http_url or None)``, then ``watch()`` twice a
    second (the processing pool's
    check).

    Raises OSError when a port cannot be bound, and what ``open_core`` raises.
    """
    stop = stop or stop_event()
    core = wiring.open_core(settings, serving=True)
    reload_keys_on_hangup(core.keyring)
    if not shared_port:  # one of several workers: the parent did it
        at_start(core)
    servers: list[Any] = []
    try:
        scp = wiring.start_dimse(core, shared_port=shared_port)
        servers.append(scp)
        if web:
            servers.append(wiring.start_web(core))
    except BaseException:
        _stop_all(servers)
        core.close()
        raise
    try:
        ready(scp.server_address[1], servers[1].url if web else None)
        while not stop.wait(0.5):
            if watch is not None:
                watch()
    finally:
        log.info("shutting down")
        _stop_all(servers)
        core.close()


def serve_web(settings: Settings) -> tuple[str, Callable[[], None]]:
    """Starts the HTTP server in this process on a core of its own (used beside several DIMSE
    worker processes); returns its URL and a function that stops it. Raises OSError."""
    core = wiring.open_core(settings, serving=True)
    reload_keys_on_hangup(core.keyring)  # also passes SIGHUP on to the DIMSE workers
    at_start(core)
    try:
        server = wiring.start_web(core)
    except BaseException:
        core.close()
        raise

    def close() -> None:
        server.shutdown()
        core.close()
    return server.url, close


def _stop_all(servers: list[Any]) -> None:
    for server in reversed(servers):
        server.shutdown()


def _orphan_watch(stop: threading.Event, parent: int) -> None:
    # A parent killed outright (SIGKILL) cannot stop its workers: they notice and stop.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("the parent process is gone; stopping this worker")
            stop.set()


def _worker(settings: Settings, started: Any, index: int, parent: int) -> None:
    logs.configure(settings.log.level)
    # The parent forwards SIGINT/SIGTERM; a Ctrl-C in the terminal reaches every worker too.
    stop = stop_event()
    threading.Thread(target=_orphan_watch, args=(stop, parent), daemon=True).start()
    try:
        serve_one(settings, lambda port, _url: started.put((index, port, "")),
                  shared_port=True, stop=stop)
    except BaseException as exc:  # reported to the parent, which exits with the message
        started.put((index, 0, f"{type(exc).__name__}: {exc}"))


def _probe_port(host: str, port: int) -> None:
    """Raises OSError if the port is taken. SO_REUSEPORT would otherwise let a second node
    (with another store) silently share the port of one already running."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the receivers bind: connections of a node killed a moment ago, left in
        # TIME_WAIT, do not hold the port; a listening node still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def serve_workers(settings: Settings, ready: Callable[[int, str | None], None],
                  watch: Callable[[], None] | None = None, web: bool = False) -> None:
    """Runs ``settings.dimse.workers`` worker processes on one port until SIGINT/SIGTERM,
    and, with ``web``, the HTTP server in this process.

    Raises OSError naming the first worker's failure to start.
    """
    _probe_port(settings.dimse.host, settings.dimse.port)
    if settings.dimse.tls.enabled:
        _probe_port(settings.dimse.host, settings.dimse.tls.port)
    stop = stop_event()
    if web:
        url, close_web = serve_web(settings)  # reloads keys on SIGHUP, passes it on
    else:
        core = wiring.open_core(settings)
        reload_keys_on_hangup(core.keyring)
        at_start(core)
        url, close_web = None, core.close
    context = multiprocessing.get_context("spawn")
    started = context.Queue()
    workers = [context.Process(target=_worker, args=(settings, started, i, os.getpid()),
                               name=f"support-node-dimse-{i}", daemon=False)
               for i in range(settings.dimse.workers)]
    with _hangup_ignored():
        for proc in workers:
            proc.start()
    try:
        for _ in workers:
            _index, port, error = started.get(timeout=120)
            if error:
                raise OSError(error)
        ready(settings.dimse.port, url)
        while not stop.wait(0.5):
            if not all(p.is_alive() for p in workers):
                log.error("a DIMSE worker stopped unexpectedly; stopping the node")
                break
            if watch is not None:
                watch()
    finally:
        if close_web is not None:
            close_web()
        for proc in workers:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: a clean shutdown in the worker
        for proc in workers:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _process_jobs(settings: Settings, parent: int, kinds: tuple[str, ...]) -> None:
    """A worker process: takes jobs of ``kinds`` until told to stop or orphaned."""
    from node.api import Node
    from node.processing.worker import Worker

    logs.configure(settings.log.level)
    # Receiving comes first: a sender waits on every C-STORE, a queued job waits on no one.
    # Below the receiver's priority, a burst fills the queue and the workers catch up after.
    os.nice(PROCESSING_NICE)
    stop = stop_event()
    threading.Thread(target=_orphan_watch, args=(stop, parent), daemon=True).start()
    node = Node.from_settings(settings)
    reload_keys_on_hangup(node.core.keyring)
    try:
        # One worker, one core: BLAS's own threads (the filter's PCA updates) only fight
        # the receiver and the other workers for the same cores (measured: 2 s stalls).
        with threadpool_limits(limits=1):
            Worker(node.core, kinds=kinds).run(stop)
    finally:
        node.close()


def _upload(settings: Settings, parent: int) -> None:
    """The uploader's process: moves the spool into the store until told to stop or
    orphaned. Below the receivers in priority (its PUTs cost CPU: signing, TLS, HTTP),
    above the processing workers: a spool that never drains ends in back-pressure."""
    logs.configure(settings.log.level)
    os.nice(UPLOAD_NICE)
    stop = stop_event()
    threading.Thread(target=_orphan_watch, args=(stop, parent), daemon=True).start()
    core = wiring.open_core(settings)
    reload_keys_on_hangup(core.keyring)
    try:
        wiring.start_uploader(core)
        stop.wait()
    finally:
        core.close()  # stops the uploader after its round in progress


class ProcessingPool:
    """``processing.workers`` processes that preprocess and filter stored instances, apart
    from the DIMSE receiver so that decoding never slows a C-STORE; and, when segmentation
    or pretraining is configured, one more for those jobs; and the spool's uploader.

    ``check()`` restarts one that died (at most once per ``restart_every`` seconds each):
    its jobs are taken again, and the receiver is not stopped for it.
    """

    def __init__(self, settings: Settings, restart_every: float = 5.0) -> None:
        self.settings = settings
        self.restart_every = restart_every
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[Any] = []
        self._started: list[float] = []
        self._kinds: list[tuple[str, ...]] = []

    def __enter__(self) -> ProcessingPool:
        from node.index.jobs import PROCESS
        from node.processing.worker import AI_KINDS

        s = self.settings
        self._kinds = [(PROCESS,)] * s.processing.workers
        if s.processing.workers:
            # Segmenting and pretraining take minutes: in a worker of their own, so that
            # arriving images never wait behind them. Always there, since a person can ask
            # for a segmentation on the AI page (it idles, polling, until a job comes).
            self._kinds.append(AI_KINDS)
        self._kinds.append(UPLOAD)
        for i in range(len(self._kinds)):
            self._procs.append(self._spawn(i))
            self._started.append(time.monotonic())
        return self

    def _spawn(self, index: int) -> Any:
        if self._kinds[index] == UPLOAD:
            proc = self._context.Process(target=_upload, args=(self.settings, os.getpid()),
                                         name="support-node-upload", daemon=False)
        else:
            proc = self._context.Process(target=_process_jobs,
                                         args=(self.settings, os.getpid(), self._kinds[index]),
                                         name=f"support-node-processing-{index}", daemon=False)
        with _hangup_ignored():
            proc.start()
        return proc

    def check(self) -> None:
        """Restarts workers that stopped unexpectedly."""
        for i, proc in enumerate(self._procs):
            if proc.is_alive() or time.monotonic() - self._started[i] < self.restart_every:
                continue
            log.error("%s stopped (exit code %s); starting it again", proc.name,
                      proc.exitcode)
            metrics.process_gone(proc.pid)
            self._procs[i] = self._spawn(i)
            self._started[i] = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: finishes its job, saves the filter
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
