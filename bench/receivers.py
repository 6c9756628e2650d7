"""The receivers the benchmark sends to, each started fresh as its own process per run.

A receiver is started with ``start()`` (waits until ``echoscu`` answers), then ``finish()``
stops it and returns how many instances it really kept (counted from what it stored, not from
what the sender said), and ``close()`` (idempotent) stops anything left and removes its temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port the OS says is free on 127.0.0.1 (bound to port 0, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def clean_env(nodelay: bool | None = None) -> dict[str, str]:
    """This environment without SUPPORT_NODE_* (every receiver runs on its defaults).

    ``nodelay``: True sets TCP_NODELAY=1 (dcmtk's switch to turn Nagle off, read by every
    dcmtk-based program, Orthanc included), False removes it, None leaves it as it is.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORT_NODE_")}
    if nodelay is not None:
        env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


class ReceiverError(RuntimeError):
    pass


class Receiver:
    """Base: a process listening on 127.0.0.1:port under ``aet``, in its own temp dir."""

    name = "receiver"
    aet = "ANY-SCP"
    start_timeout = 60.0

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-rx-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "receiver.log"

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        cmd, env = self.command()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.dir, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ReceiverError(f"{self.name} exited with {self.proc.returncode}: "
                                    f"{self.log_tail()}")
            echo = subprocess.run(["echoscu", "-to", "2", "-aec", self.aet, "127.0.0.1",
                                   str(self.port)], capture_output=True, check=False)
            if echo.returncode == 0:
                return
            time.sleep(0.1)
        raise ReceiverError(f"{self.name} did not answer C-ECHO in {self.start_timeout:.0f} s")

    def stop(self) -> None:
        stop_process(self.proc)

    def stored(self) -> int:
        raise NotImplementedError

    def finish(self) -> int:
        """Stops the receiver and returns how many instances it kept."""
        self.stop()
        return self.stored()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, n: int = 800) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class SupportNode(Receiver):
    """``support-node serve`` on a fresh home: local store, fsync on, every default.

    Run as ``python -m node.cli`` with this checkout first on PYTHONPATH, so that the code
    measured is the working tree's even when the venv's editable install points elsewhere.
    """

    name = "support-node"
    aet = "SUPPORT_NODE"

    def __init__(self, workers: int | None = None, env: dict[str, str] | None = None) -> None:
        """``workers``: receiving processes (None: the node's default, one per core);
        ``env``: settings as SUPPORT_NODE_* variables (an S3 store, ``ack``)."""
        super().__init__()
        self.workers = workers
        self.extra_env = dict(env or {})

    def command(self) -> tuple[list[str], dict[str, str]]:
        home = self.dir / "home"
        env = node_env() | {"SUPPORT_NODE_HOME": str(home)} | self.extra_env
        workers = [] if self.workers is None else ["--workers", str(self.workers)]
        return [*NODE_CLI, "serve", "--init", "--home", str(home), "--dimse-port", str(self.port),
                "--http-port", "0", *workers], env

    settle_s = 5.0  # serve's other processes (processing, uploader) finish starting

    def start(self) -> None:
        """Starts the node and waits until it answers, then ``settle_s`` more: the
        receivers answer before the processing workers and the uploader have imported
        their libraries, and that start-up would otherwise fall inside a short run."""
        super().start()
        time.sleep(self.settle_s)

    def node_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs ``support-node ARGS`` on this receiver's home and settings."""
        env = node_env() | {"SUPPORT_NODE_HOME": str(self.dir / "home")} | self.extra_env
        return subprocess.run([*NODE_CLI, *args], capture_output=True, text=True, env=env,
                              check=False)

    def http_url(self) -> str | None:
        """The DICOMweb URL the node printed, once ready."""
        import re

        found = re.search(r"HTTP on (http://\S+?)/dicom-web", self.log_tail(100000))
        return found.group(1) if found else None

    def stored(self) -> int:
        out = self.node_cli("ls", "--json", "--home", str(self.dir / "home"))
        if out.returncode != 0:
            raise ReceiverError(f"support-node ls failed: {out.stderr[-400:]}")
        return sum(1 for line in out.stdout.splitlines() if line.startswith("{"))


NODE_CLI = [sys.executable, "-m", "node.cli"]


def node_env() -> dict[str, str]:
    """clean_env() with this checkout first on PYTHONPATH."""
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class BarePynetdicom(Receiver):
    """bench/bare_scp.py: pynetdicom that discards; its defaults or the node's PDU/transport."""

    aet = "BARE"

    def __init__(self, max_pdu: int | None = None, tuned: bool = False) -> None:
        super().__init__()
        self.max_pdu, self.tuned = max_pdu, tuned
        self.count_file = self.dir / "count"

    def command(self) -> tuple[list[str], dict[str, str]]:
        cmd = [sys.executable, str(ROOT / "bench" / "bare_scp.py"), str(self.port),
               "--count-file", str(self.count_file)]
        if self.max_pdu is not None:
            cmd += ["--max-pdu", str(self.max_pdu)]
        if self.tuned:
            cmd.append("--tuned")
        return cmd, clean_env()

    def stored(self) -> int:
        try:
            return int(self.count_file.read_text())
        except (OSError, ValueError):
            raise ReceiverError(f"bare SCP left no count: {self.log_tail()}") from None


class DcmtkStorescp(Receiver):
    """dcmtk's ``storescp -od DIR PORT``: one process, writes each instance as a file.

    It cannot bind to one address, so it listens on all interfaces (an isolated bench machine).
    ``nodelay``: TCP_NODELAY=1 in its environment; without it, its responses wait for the
    sender's delayed ACK (~40 ms each).
    """

    name = "dcmtk storescp"
    aet = "STORESCP"

    def __init__(self, nodelay: bool = True) -> None:
        super().__init__()
        self.nodelay = nodelay

    def command(self) -> tuple[list[str], dict[str, str]]:
        (self.dir / "files").mkdir()
        return ["storescp", "-aet", self.aet, "-od", str(self.dir / "files"),
                str(self.port)], clean_env(self.nodelay)

    def stored(self) -> int:
        return sum(1 for p in (self.dir / "files").iterdir() if p.is_file())


class Orthanc(Receiver):
    """``Orthanc CONFIG.json`` with its own storage, free ports, defaults otherwise (fsync on).

    ``nodelay`` as for DcmtkStorescp: Orthanc's DICOM side is dcmtk's and reads TCP_NODELAY.
    The Debian service runs it without (``nodelay=False`` is Orthanc as deployed by apt).
    """

    name = "Orthanc"
    aet = "ORTHANC"

    def __init__(self, nodelay: bool = True) -> None:
        super().__init__()
        self.nodelay = nodelay
        self.http_port = free_port()

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": True,
            "HttpServerEnabled": True,
        }
        path = self.dir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return [orthanc_binary() or "Orthanc", str(path)], clean_env(self.nodelay)

    def finish(self) -> int:
        n = self.stored()  # REST answers only while it runs
        self.stop()
        return n

    def stored(self) -> int:
        url = f"http://127.0.0.1:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(json.load(resp)["CountInstances"])


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def ensure_orthanc() -> tuple[str | None, str]:
    """The Orthanc binary, installing the Debian package when missing and allowed.

    Returns (path or None, a note). The package's own service (ports 4242/8042) is stopped
    if it got started: the bench runs its own process on free ports.
    """
    found = orthanc_binary()
    note = ""
    if found is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return None, "Orthanc not installed (apt-get install orthanc needs root and apt)"
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        res = subprocess.run(["apt-get", "install", "-y", "orthanc"], capture_output=True,
                             text=True, env=env, check=False, timeout=600)
        found = orthanc_binary()
        if found is None:
            return None, f"apt-get install orthanc failed: {res.stderr.strip()[-200:]}"
        note = "installed the Debian package orthanc"
    if shutil.which("systemctl"):
        active = subprocess.run(["systemctl", "is-active", "orthanc"], capture_output=True,
                                text=True, check=False)
        if active.stdout.strip() == "active":
            subprocess.run(["systemctl", "stop", "orthanc"], capture_output=True, check=False)
            note = (note + "; " if note else "") + "stopped the system orthanc service"
    return found, note


def versions() -> dict[str, str]:
    """Versions of what is measured, for the JSON record."""
    out: dict[str, str] = {}
    for tool, args in (("storescu", ["--version"]), ("Orthanc", ["--version"])):
        exe = orthanc_binary() if tool == "Orthanc" else shutil.which(tool)
        if exe:
            res = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
            out[tool] = (res.stdout.strip().splitlines() or [""])[0]
    import pynetdicom

    out["pynetdicom"] = pynetdicom.__version__
    out["python"] = sys.version.split()[0]
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "node"],
                           capture_output=True, text=True, check=False).stdout.strip()
    out["support-node"] = f"{rev}{'+dirty' if dirty else ''} ({ROOT / 'node'})"
    return out
