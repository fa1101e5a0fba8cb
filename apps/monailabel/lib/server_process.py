"""Start and stop the project's MONAI Label server from another program (tests, benchmarks, scripts).

The server runs in MONAI Label's own environment (``make label-env``), so it is always a separate process::

    with LabelServerProcess.start(".venv-label/bin/python", studies="images", log="server.log") as server:
        requests.get(server.url + "/info/")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["LabelServerProcess", "free_port"]

START_SCRIPT = Path(__file__).resolve().parents[1] / "start.py"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LabelServerProcess:
    """A running MONAI Label server of ``apps/monailabel`` on 127.0.0.1, in its own process group.

    Attributes:
        process: the server process.
        url: ``http://127.0.0.1:<port>``.
        log: the file receiving its output.
    """

    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    @classmethod
    def start(
        cls,
        python: str | os.PathLike,
        studies: str | os.PathLike,
        log: str | os.PathLike,
        conf: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 180.0,
    ) -> LabelServerProcess:
        """Start the server on a free port and wait until ``/info/`` answers.

        Args:
            python: the MONAI Label environment's interpreter.
            studies: the folder of images.
            log: where its output goes (overwritten).
            conf: app options (``--conf name value``).
            env: extra environment variables.
            timeout: seconds to wait for ``/info/``.

        Raises:
            RuntimeError: the server exited or did not answer in time; the message ends with its log.
        """
        port, log = free_port(), Path(log)
        command = [str(python), str(START_SCRIPT), "--studies", str(studies), "--port", str(port)]
        for name, value in (conf or {}).items():
            command += ["--conf", name, str(value)]
        with log.open("w") as output:
            process = subprocess.Popen(
                command,
                env={**os.environ, **(env or {})},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(process, f"http://127.0.0.1:{port}", log)
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the label server exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer from {self.url}/info/ in {timeout:.0f} s:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/info/", timeout=10) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)

    def log_tail(self, characters: int = 6000) -> str:
        """The end of the server's output."""
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT to its process group (a clean shutdown); SIGKILL only when it has not exited in ``timeout``."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def __enter__(self) -> LabelServerProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
