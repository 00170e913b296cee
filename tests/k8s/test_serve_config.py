"""The RayService runs the Serve config `molm3d serve` runs, plus declared patches and nothing else."""

from __future__ import annotations

import copy
import importlib.util
import os
from typing import Any

import pytest
import yaml

from .conftest import K8S, OVERLAYS, one


def _load_renderer():
    spec = importlib.util.spec_from_file_location("render_serve_config", K8S / "render_serve_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_renderer()


@pytest.fixture(scope="module")
def local() -> dict[str, Any]:
    """What `molm3d serve` runs without Kafka (the cluster's bulk workers are a Deployment)."""
    from molm3d_services import stack

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MOLM3D_KAFKA_BOOTSTRAP", raising=False)
        return stack.override(stack.load_config())


def test_the_renderer_starts_from_the_same_local_config(local, monkeypatch):
    monkeypatch.setenv("MOLM3D_KAFKA_BOOTSTRAP", "kafka.example:9093")  # a developer's shell
    assert render.local_config() == local
    assert os.environ["MOLM3D_KAFKA_BOOTSTRAP"] == "kafka.example:9093"  # restored
    assert "bulk" not in {app["name"] for app in local["applications"]}


def leaf_diff(a: Any, b: Any, path: str = "") -> set[str]:
    """Paths where two configs differ; applications and deployments are matched by name."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(leaf_diff(a.get(k), b.get(k), f"{path}.{k}".lstrip(".")) for k in a.keys() | b.keys()))
    if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) and "name" in x for x in a + b):
        a_named, b_named = {x["name"]: x for x in a}, {x["name"]: x for x in b}
        return set().union(
            *(leaf_diff(a_named.get(k), b_named.get(k), f"{path}[{k}]") for k in a_named.keys() | b_named.keys())
        )
    return set() if a == b else {path}


def rendered_serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "RayService", "molm3d")["spec"]["serveConfigV2"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayservice_serve_config_is_the_local_one_plus_the_declared_patches(rendered, local, overlay):
    target = render.EFFECTIVE_TARGET[f"overlays/{overlay}"]
    expected = local
    for path in render.patch_files(target):
        expected = render.apply_patch(expected, yaml.safe_load(path.read_text()))
    assert rendered_serve_config(rendered[overlay]) == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_is_valid_for_ray_serve(rendered, overlay):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(rendered_serve_config(rendered[overlay]))


def test_generated_files_are_current(local):
    for target in render.TARGETS:
        path = K8S / target / render.GENERATED
        assert path.read_text() == render.render(target, local), (
            f"{path} is stale: run python k8s/render_serve_config.py"
        )


def test_differences_from_the_local_config_are_exactly_these(rendered, local):
    """The whole list of what the cluster changes from `molm3d serve`; anything else is drift."""
    assert leaf_diff(local, rendered_serve_config(rendered["dev"])) == {"http_options.host"}
    names = {"conformer": "Conformer", "encoder": "Encoder", "lm": "LM", "retrieval": "Retrieval", "gateway": "Gateway"}
    conformer, encoder, lm, retrieval, gateway = (f"applications[{a}].deployments[{d}]" for a, d in names.items())
    assert leaf_diff(local, rendered_serve_config(rendered["prod"])) == {
        "http_options.host",
        f"{conformer}.autoscaling_config.min_replicas",
        f"{conformer}.autoscaling_config.max_replicas",
        f"{conformer}.ray_actor_options.num_cpus",
        f"{encoder}.num_replicas",
        f"{encoder}.autoscaling_config",
        f"{encoder}.ray_actor_options.num_cpus",
        f"{encoder}.ray_actor_options.num_gpus",
        f"{encoder}.ray_actor_options.resources",
        f"{lm}.num_replicas",
        f"{lm}.autoscaling_config",
        f"{lm}.ray_actor_options.num_cpus",
        f"{lm}.ray_actor_options.num_gpus",
        f"{lm}.ray_actor_options.resources",
        f"{lm}.user_config.num_threads",
        f"{lm}.user_config.decode_nice",
        f"{retrieval}.num_replicas",
        f"{retrieval}.ray_actor_options.num_cpus",
        f"{retrieval}.user_config.molecule_index",
        f"{retrieval}.user_config.text_index",
        f"{gateway}.num_replicas",
        f"{gateway}.ray_actor_options.num_cpus",
    }


def test_a_drifted_rayservice_would_be_caught(rendered, local):
    drifted = copy.deepcopy(rendered_serve_config(rendered["dev"]))
    drifted["applications"][0]["deployments"][0]["max_queued_requests"] += 1
    assert leaf_diff(local, drifted) == {
        "http_options.host",
        "applications[conformer].deployments[Conformer].max_queued_requests",
    }


def test_patch_semantics():
    config = {
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [{"name": "a", "deployments": [{"name": "A", "num_replicas": 1, "user_config": {"x": 1}}]}],
    }
    patched = render.apply_patch(
        config,
        {
            "http_options": {"host": "0.0.0.0"},
            "deployments": {"A": {"num_replicas": None, "user_config": {"y": 2}, "autoscaling_config": {"max": 3}}},
        },
    )
    assert patched["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert patched["applications"][0]["deployments"][0] == {
        "name": "A",
        "user_config": {"x": 1, "y": 2},
        "autoscaling_config": {"max": 3},
    }
    assert config["applications"][0]["deployments"][0]["num_replicas"] == 1  # input untouched


@pytest.mark.parametrize(
    "patch",
    [{"deployments": {"Renamed": {"num_replicas": 2}}}, {"http_option": {"host": "0.0.0.0"}}],
    ids=["unknown-deployment", "unknown-top-level-key"],
)
def test_a_patch_that_does_not_fit_the_local_config_fails(local, patch):
    with pytest.raises(render.PatchError):
        render.apply_patch(local, patch)


def test_render_check_mode_reports_a_stale_file(tmp_path, monkeypatch, local, capsys):
    monkeypatch.setattr(render, "K8S", tmp_path)
    monkeypatch.setattr(render, "local_config", lambda: local)
    for target, patches in render.TARGETS.items():
        for patch in patches:
            dest = tmp_path / patch
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text((K8S / patch).read_text())
        (tmp_path / target).mkdir(parents=True, exist_ok=True)
    assert render.main(["--check"]) == 1  # nothing generated yet
    assert render.main([]) == 0
    assert render.main(["--check"]) == 0
    (tmp_path / "base" / render.GENERATED).write_text("stale\n")
    assert render.main(["--check"]) == 1
    assert "stale" in capsys.readouterr().err
