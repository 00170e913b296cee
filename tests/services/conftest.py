"""One real local stack for the serving tests: `molm3d serve` in a subprocess (Ray Serve, gRPC and
HTTP on 127.0.0.1 test ports, a bearer token), with a tiny checkpoint; stopped with SIGTERM at the end.
For the bulk tests, a local Kafka broker and a second stack on it (`broker`, `bulk_stack`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from molm3d_services.common.serve_patches import START_DELAY_ENV
from molm3d_services.stack import local_only_ray, process_tree
from tests.broker import Broker, alive, free_port

local_only_ray()  # as the test stacks run Ray: tests that attach to one with ray.init(address=...) find it

TOKEN = "test-token-7f3a"
# What the test stacks change in serve.yaml (see stack.override).
TEST_DEPLOYMENTS: dict[str, dict] = {
    "Conformer": {"user_config": {"cache_size": 100, "max_heavy_atoms": 60}},
    # A short queue on the LM so the admission-control test can fill it. Two sequences decode at once;
    # the third slot is for the gateway's load polls (Serve counts them as requests like any other):
    # without it, a poll waiting behind two captions took a queue place, and the next caption was
    # refused for backpressure with the LM half idle.
    "LM": {
        "max_ongoing_requests": 3,
        "max_queued_requests": 2,
        "user_config": {"max_batch_size": 2},
    },
    "Encoder": {"user_config": {"batch_wait_timeout_s": 0.05}},
    "Retrieval": {"user_config": {"reload_interval_s": 1}},
}
# The shared stack's LM replica starts LM_START_DELAY_S late (its worker sleeps first, as a slow
# checkpoint load would): the gateway is up before it, which test_health.py checks from `ready_polls`.
LM_START_DELAY_S = 15
SERVED_DEPLOYMENTS = {
    **TEST_DEPLOYMENTS,
    "LM": {
        **TEST_DEPLOYMENTS["LM"],
        "ray_actor_options": {
            "num_cpus": 0.25,
            "num_gpus": 0,
            "runtime_env": {"env_vars": {START_DELAY_ENV: str(LM_START_DELAY_S)}},
        },
    },
}


@dataclass
class Poll:
    """One GET of the ready route."""

    at_s: float  # since the stack was launched
    took_s: float
    status: int | None  # None: no HTTP answer (refused while Serve starts, or timed out)
    body: dict | None  # the gateway's JSON (200 and 503)
    error: str = ""


def poll_ready(url: str, launched_at: float, timeout_s: float = 10) -> Poll:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            status, body, error = r.status, json.loads(r.read()), ""
    except urllib.error.HTTPError as err:  # 404 in plain text while Serve has no route to the gateway yet
        text = err.read()
        status, body, error = err.code, json.loads(text) if err.code == 503 else None, text.decode()[:80]
    except OSError as err:  # refused before the proxy listens; a timeout if the route hangs
        status, body, error = None, None, f"{type(err).__name__}: {err}"
    return Poll(start - launched_at, time.monotonic() - start, status, body, error)


class Stack:
    def __init__(
        self,
        tmp: Path,
        checkpoint: Path,
        text_index: Path,
        kafka: str | None = None,
        deployments: dict[str, dict] | None = None,
    ) -> None:
        from molm3d_services import stack

        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        config = stack.override(
            stack.load_config(),
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            checkpoint=str(checkpoint),
            text_index=str(text_index),
            kafka=kafka,
            deployments=deployments or TEST_DEPLOYMENTS,
        )
        self.config_path = tmp / "serve.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "serve.log"
        env = {**os.environ, "MOLM3D_API_TOKEN": TOKEN, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
        cmd = [
            sys.executable,
            "-m",
            "molm3d_core.cli.main",
            "serve",
            "--config",
            str(self.config_path),
            "--metrics-port",
            str(self.metrics_port),
            "--num-cpus",
            "4",
        ]
        self.log = self.log_path.open("w")
        self.launched_at, self.ready_polls = time.monotonic(), []
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout_s: float = 420) -> None:
        """Polls the ready route until it says 200; every poll is kept in `ready_polls`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"molm3d serve exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}"
                )
            self.ready_polls.append(poll_ready(f"{self.http}/v1/health/ready", self.launched_at))
            if self.ready_polls[-1].status == 200:
                return
            time.sleep(0.5)
        raise TimeoutError(f"stack not ready after {timeout_s} s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self, timeout_s: float = 120) -> tuple[int, set[int]]:
        """SIGTERM, wait; returns the exit code and the processes it left alive."""
        below = process_tree(self.proc.pid) - {self.proc.pid}
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(alive(p) for p in below):
            time.sleep(0.5)
        left = {p for p in below if alive(p)}
        for p in left:  # do not leak into the rest of the suite, whatever the assertion says
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        self.log.close()
        return code, left


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from molm3d_core.checkpoints import save_checkpoint
    from molm3d_core.models import MoLM3D, MoLM3DConfig

    model = MoLM3D(MoLM3DConfig.preset_config("tiny")).eval()
    # Made-up target statistics, as stage 0 sets them from data: the property heads count as trained, so
    # the routes and pages that show their values have values, in their units, to show.
    n = len(model.property_head.targets)
    made_up = torch.arange(4 * n, dtype=torch.float64).reshape(4, n) / 7
    model.property_head.set_statistics(made_up, torch.ones(4, n, dtype=torch.bool))
    folder = tmp_path_factory.mktemp("checkpoint") / "tiny"
    save_checkpoint(model, folder, model_id="molm3d-tiny-test")
    return folder


@pytest.fixture(scope="session")
def text_index(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """The example texts, indexed by the tiny checkpoint (the molecule index stays the built-in one)."""
    from molm3d_core.checkpoints import load_model
    from molm3d_core.retrieval import build_index
    from molm3d_services.retrieval.prepare import LIBRARY

    model, info = load_model(tiny_checkpoint, device="cpu", dtype="float32", with_lm=False)
    folder = tmp_path_factory.mktemp("index") / "texts"
    build_index(folder, model, info, texts=LIBRARY / "texts.jsonl")
    return folder


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """The stack once it is ready; stopped afterwards unless a test already stopped it."""
    try:
        stack.wait_ready()
        yield stack
    finally:
        if stack.proc.poll() is None:
            stack.stop()


@pytest.fixture(scope="session")  # one stack for every module that uses it: each start costs ~60 s
def served(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, text_index: Path):
    with running(
        Stack(tmp_path_factory.mktemp("serve"), tiny_checkpoint, text_index, deployments=SERVED_DEPLOYMENTS)
    ) as stack:
        yield stack


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory):
    """The local Kafka broker (tests/broker.py), one for every module that uses it."""
    b = Broker(tmp_path_factory.mktemp("kafka"))
    b.up()
    try:
        yield b
    finally:
        b.down()


@pytest.fixture(scope="session")  # test_bulk.py, test_bulk_http.py, test_console_ui.py: one start (~60 s)
def bulk_stack(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, text_index: Path, broker: Broker):
    """A second stack, `molm3d serve --kafka` on `broker`: bulk workers beside the stages, and the
    gateway's bulk routes on the same broker."""
    kafka = {"bootstrap": broker.bootstrap, "session_timeout_ms": 6000}
    bulk = Stack(
        tmp_path_factory.mktemp("serve-bulk"),
        tiny_checkpoint,
        text_index,
        kafka=broker.bootstrap,
        deployments={
            "Conformer": {"user_config": {"cache_size": 1000, "max_heavy_atoms": 60}},
            "Encoder": {"user_config": {"batch_wait_timeout_s": 0.05}},
            "LM": {"user_config": {"max_batch_size": 16}},
            "BulkWorker": {"user_config": {"kafka": kafka, "max_batch": 8, "max_in_flight_batches": 2}},
        },
    )
    with running(bulk) as stack:
        yield stack


def _order(item: pytest.Item) -> int:
    """0: most tests; 1: those on `bulk_stack`, together (once started it lives to the session's end,
    beside `served`: two Ray stacks on one machine, so it starts as late as possible); 2: the test that
    stops the shared stack, after every other test that uses it."""
    if item.get_closest_marker("stops_stack") is not None:
        return 2
    return 1 if "bulk_stack" in getattr(item, "fixturenames", ()) else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_order)  # stable: each group keeps the collection order


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stops_stack: stops the shared stack; runs after the tests that use it")
