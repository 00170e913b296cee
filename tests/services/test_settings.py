"""Typed stage settings (services/common/settings.py): unknown keys, wrong types and out-of-range values
are refused with the key's name; defaults live in the dataclass; serve.yaml and every k8s target fit."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Literal

import pytest

from molm3d_services import stack
from molm3d_services.bulk.deployment import BulkSettings
from molm3d_services.bulk.worker import WorkerOptions
from molm3d_services.common.model import ModelSettings
from molm3d_services.common.settings import Settings, SettingsError, StageSettings, setting
from molm3d_services.conformer.deployment import ConformerSettings
from molm3d_services.encoder.deployment import EncoderSettings
from molm3d_services.gateway.deployment import GatewaySettings
from molm3d_services.lm.deployment import LMSettings
from molm3d_services.retrieval.deployment import RetrievalSettings

K8S = Path(__file__).resolve().parents[2] / "k8s"
# deployment name in serve.yaml -> its settings class (LM and Gateway join when they move to typed settings)
SETTINGS = {
    "Conformer": ConformerSettings,
    "Encoder": EncoderSettings,
    "Retrieval": RetrievalSettings,
    "BulkWorker": BulkSettings,
    "LM": LMSettings,
    "Gateway": GatewaySettings,
}


@dataclasses.dataclass(frozen=True)
class Example(StageSettings):
    batch: int = setting(8, ge=1, le=64)
    wait_s: float = setting(0.5, gt=0)
    mode: Literal["fast", "exact"] = "fast"
    verbose: bool = False
    path: str = ""

    def __post_init__(self) -> None:
        if self.mode == "exact" and self.batch > 1:
            raise ValueError("mode exact needs batch 1")


def test_defaults_come_from_the_dataclass():
    assert Example.from_user_config({}) == Example.from_user_config(None) == Example()
    assert Example().token_env == "MOLM3D_API_TOKEN"
    # null in YAML (`key:`) is the default; an int is taken where a float is declared
    got = Example.from_user_config({"path": None, "wait_s": 2, "mode": "exact", "batch": 1})
    assert (got.path, got.wait_s, got.mode, got.batch) == ("", 2.0, "exact", 1) and isinstance(got.wait_s, float)
    for cls in SETTINGS.values():
        assert cls.from_user_config({}) == cls()


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(SettingsError) as caught:
        Example.from_user_config({"bach": 4})
    assert str(caught.value) == (
        "Example: unknown user_config key 'bach'; allowed: batch, mode, path, token_env, verbose, wait_s"
    )
    with pytest.raises(SettingsError, match="EncoderSettings: unknown user_config key 'max_batch'; allowed: "
                       "batch_wait_timeout_s, checkpoint, device, dtype, max_batch_size, num_threads"):  # fmt: skip
        EncoderSettings.from_user_config({"max_batch": 8})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"batch": "8"}, "batch must be an integer, got '8'"),
        ({"batch": 8.0}, "batch must be an integer, got 8.0"),
        ({"batch": True}, "batch must be an integer, got True"),
        ({"batch": 0}, "batch must be >= 1, got 0"),
        ({"batch": 65}, "batch must be <= 64, got 65"),
        ({"wait_s": 0}, "wait_s must be > 0, got 0"),
        ({"wait_s": float("nan")}, "wait_s must be a finite number, got nan"),
        ({"wait_s": "1s"}, "wait_s must be a finite number, got '1s'"),
        ({"mode": "slow"}, "mode must be one of 'fast', 'exact', got 'slow'"),
        ({"verbose": "yes"}, "verbose must be true or false, got 'yes'"),
        ({"path": 3}, "path must be a string, got 3"),
        ({"mode": "exact"}, "mode exact needs batch 1"),  # __post_init__
    ],
)
def test_wrong_types_and_ranges_are_refused_by_name(config, message):
    with pytest.raises(SettingsError) as caught:
        Example.from_user_config(config)
    assert str(caught.value) == f"Example: {message}"


def test_a_user_config_must_be_a_mapping():
    with pytest.raises(SettingsError, match="Example: user_config must be a mapping, got list"):
        Example.from_user_config([("batch", 2)])


def test_model_settings():
    s = ModelSettings.from_user_config({"checkpoint": "", "device": "cuda:1", "dtype": "bfloat16", "num_threads": 3})
    assert s.model_key == (None, "cuda:1", "bfloat16", "small") and s.torch_threads == 3
    assert ModelSettings().torch_threads >= 1  # 0 = every core but one, at least one
    for bad, message in (
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"dtype": "fp8"}, "dtype must be one of"),
        ({"num_threads": -1}, "num_threads must be >= 0"),
    ):
        with pytest.raises(SettingsError, match=f"ModelSettings: {message}"):
            ModelSettings.from_user_config(bad)


def test_bulk_settings_carry_every_worker_option_and_check_kafka_keys():
    s = BulkSettings.from_user_config({"max_batch": 8, "kafka": {"bootstrap": "127.0.0.1:9092"}})
    assert s.worker_options() == WorkerOptions(max_batch=8)
    assert s.kafka_settings().bootstrap == "127.0.0.1:9092"
    with pytest.raises(SettingsError, match="BulkSettings: unknown Kafka setting 'bootstrap_servers'"):
        BulkSettings.from_user_config({"kafka": {"bootstrap_servers": "x"}})
    with pytest.raises(SettingsError, match="BulkSettings: assignment must be one of 'replicas', 'group'"):
        BulkSettings.from_user_config({"assignment": "static"})


def _k8s_targets() -> dict[str, dict]:
    spec = importlib.util.spec_from_file_location("render_serve_config", K8S / "render_serve_config.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    return {target: render.rendered_config(target) for target in render.TARGETS}


def test_every_shipped_user_config_fits_its_settings(monkeypatch):
    monkeypatch.setenv("MOLM3D_KAFKA_BOOTSTRAP", "127.0.0.1:9092")  # keeps the bulk application
    configs = {"services/serve.yaml": stack.override(stack.load_config()), **_k8s_targets()}
    for source, config in configs.items():
        seen = set()
        for app in config["applications"]:
            for dep in app["deployments"]:
                if dep["name"] in SETTINGS:
                    SETTINGS[dep["name"]].from_user_config(dep.get("user_config"))
                    seen.add(dep["name"])
        expected = set(SETTINGS) if source == "services/serve.yaml" else set(SETTINGS) - {"BulkWorker"}
        assert seen == expected, source


def test_the_settings_base_has_no_fields():
    assert dataclasses.fields(Settings) == ()
