"""A private NVIDIA MPS control daemon: started, queried and stopped through ``nvidia-cuda-mps-control``.

The daemon gets its own pipe and log directories under a temporary folder, so it never meets a
system-wide MPS daemon; clients reach it through ``client_environment()``. The GPU's compute mode is
never read or changed (MPS runs in the default mode; an exclusive mode is the operator's choice).

After a fatal fault in one client, the MPS server refuses new clients until every client it serves
has exited: ``faulted_servers`` reports such servers, so every worker under this daemon is restarted.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PID_FILE", "MpsDaemon", "MpsDaemonError"]

log = logging.getLogger(__name__)

#: The control daemon writes its process id here, inside the pipe directory.
PID_FILE = "nvidia-cuda-mps-control.pid"


class MpsDaemonError(RuntimeError):
    """The control daemon could not be started or did not answer."""


class MpsDaemon:
    """One control daemon with private ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY``."""

    def __init__(self, executable: str, *, timeout: float = 10.0) -> None:
        self.executable = executable
        self.timeout = timeout
        self.root: Path | None = None
        self._pid: int | None = None

    @property
    def pipe_directory(self) -> Path:
        assert self.root is not None, "the daemon is not started"
        return self.root / "pipe"

    @property
    def log_directory(self) -> Path:
        assert self.root is not None, "the daemon is not started"
        return self.root / "log"

    @property
    def running(self) -> bool:
        return self.root is not None

    def client_environment(self) -> dict[str, str]:
        """What a client process needs to find this daemon (set before its CUDA context exists)."""
        return {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_directory),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log_directory),
        }

    def _environment(self) -> dict[str, str]:
        return {**os.environ, **self.client_environment()}

    def start(self) -> None:
        """``nvidia-cuda-mps-control -d`` with fresh private directories; raises ``MpsDaemonError``."""
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="ladle-mps-"))
            self.pipe_directory.mkdir()
            self.log_directory.mkdir()
        errors = self.log_directory / "start.err"
        try:
            # The daemon forks into the background and may keep inherited descriptors open: give it a
            # file, never a pipe, so this call cannot wait on the daemon's lifetime.
            with errors.open("wb") as stderr:
                result = subprocess.run(
                    [self.executable, "-d"],
                    env=self._environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    timeout=self.timeout,
                    check=False,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._discard()
            raise MpsDaemonError(f"{self.executable} -d failed: {exc}") from None
        if result.returncode != 0:
            message = errors.read_text(errors="replace").strip()
            self._discard()
            raise MpsDaemonError(f"{self.executable} -d exited with {result.returncode}: {message}")
        self._pid = self._wait_for_pid()
        atexit.register(self.stop)
        log.info("MPS control daemon %s started (pipe directory %s)", self._pid, self.pipe_directory)

    def _wait_for_pid(self) -> int | None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            pid = self._read_pid()
            if pid is not None:
                return pid
            time.sleep(0.02)
        return None  # an older daemon that writes no pid file: liveness then asks the daemon itself

    def _read_pid(self) -> int | None:
        try:
            return int((self.pipe_directory / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None

    def command(self, text: str) -> str:
        """Send one control command (``get_server_list``, ``quit``...) and return what it printed."""
        try:
            result = subprocess.run(
                [self.executable],
                input=text + "\n",
                env=self._environment(),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MpsDaemonError(f"{self.executable}: {text!r} failed: {exc}") from None
        if result.returncode != 0:
            raise MpsDaemonError(
                f"{self.executable}: {text!r} exited with {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    def alive(self) -> bool:
        """The control daemon still runs (its process exists, or it answers a query)."""
        if self.root is None:
            return False
        if self._pid is not None:
            return _exists(self._pid)
        try:
            self.command("get_server_list")
        except MpsDaemonError:
            return False
        return True

    def server_pids(self) -> list[int]:
        return [int(word) for word in self.command("get_server_list").split() if word.isdigit()]

    def faulted_servers(self) -> list[int]:
        """Servers that report a fatal fault (they refuse new clients until all theirs have exited)."""
        faulted = []
        for pid in self.server_pids():
            if "FAULT" in self.command(f"get_server_status {pid}").upper():
                faulted.append(pid)
        return faulted

    def restart(self) -> None:
        """Start again in the same directories, after the daemon died."""
        self._pid = None
        if self.root is not None:
            (self.pipe_directory / PID_FILE).unlink(missing_ok=True)
        self.start()

    def stop(self) -> None:
        """``echo quit | nvidia-cuda-mps-control``; the daemon is killed if it does not go, and its
        directories are removed."""
        if self.root is None:
            return
        atexit.unregister(self.stop)
        try:
            self.command("quit")
        except MpsDaemonError as exc:
            log.warning("MPS control daemon did not take 'quit': %s", exc)
        pid = self._pid
        if pid is not None and not self._gone(pid, self.timeout):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._discard()

    @staticmethod
    def _gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _exists(pid):
                return True
            time.sleep(0.02)
        return False

    def _discard(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        self._pid = None


def _exists(pid: int) -> bool:
    """The process runs (a zombie that nobody reaped yet counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"
