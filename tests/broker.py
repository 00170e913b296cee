"""The local Kafka-protocol broker (infra/kafka/broker.py) for tests: free ports, durable storage in a
test folder, and a way to kill it like a crash."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BROKER = Path(__file__).resolve().parents[1] / "infra" / "kafka" / "broker.py"
PROCESSES = ("kafkaguard", "tansu", "s3guard", "rclone")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Broker:
    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.s3_port = folder, free_port(), free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tansu_port(self) -> int:
        """Tansu's own listener, behind kafka_guard.py (for tests of what the guard changes)."""
        return int((self.folder / "pids" / "tansu.port").read_text())

    def _run(self, command: str) -> None:
        argv = [sys.executable, str(BROKER), command, "--dir", str(self.folder)]
        if command == "up":
            argv += ["--port", str(self.port), "--s3-port", str(self.s3_port)]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def up(self) -> None:
        self._run("up")

    def down(self) -> None:
        self._run("down")

    def pids(self) -> dict[str, int]:
        return {name: int((self.folder / "pids" / f"{name}.pid").read_text()) for name in PROCESSES}

    def kill(self) -> None:
        """SIGKILL every broker process: no flush, no goodbye."""
        pids = self.pids()
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
            time.sleep(0.1)
