"""A `python -m serving serve ...` child process, for the load benchmark and the tests: started (on a free port
with `--port 0`), ready when `/v2/health/ready` says so, stopped with SIGTERM (killed, with its whole process
group, if it does not stop in time)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

KIT_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0  # Ray Serve on 2 shared cores takes the longest


class ServerProcess:
    def __init__(self, args: Sequence[str], start_timeout_s: float = START_TIMEOUT_S) -> None:
        env = {**os.environ, "PYTHONPATH": str(KIT_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving", "serve", *args],
            cwd=KIT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: killed as one if it hangs
        )
        self.stderr: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.process.stdout, lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self.stderr.append), daemon=True).start()
        self.url = self._wait_for_url(lines, start_timeout_s)
        self.address = self.url.removeprefix("http://")
        self._wait_ready(start_timeout_s)

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def _wait_for_url(self, lines: queue.Queue[str], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if line.startswith("serving on "):
                return line.split()[-1]
        self.kill()
        raise RuntimeError(f"the server did not start (rc {self.process.returncode}): {''.join(self.stderr)[-3000:]}")

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:  # refused, 503 while starting (HTTPError is an OSError)
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the server never got ready: {''.join(self.stderr)[-3000:]}")

    def rss_bytes(self) -> int:
        """The server's resident memory (its own process; Ray's workers are not counted)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait; the exit status (a kill after the timeout fails the caller's assertion)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
