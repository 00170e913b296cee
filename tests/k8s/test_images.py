"""The Dockerfiles, read without Docker: pinned bases, pinned installs, multi-stage with a lean
non-root final stage, a build context limited to what the image installs."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field

import pytest

from .conftest import REPO

DOCKER = REPO / "infra" / "docker"
DOCKERFILES = sorted(p.name for p in DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|make|cmake|clang|grpcio-tools|git)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(text: str) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    logical, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def pip_commands(stage: Stage) -> list[list[str]]:
    """Every `pip install` / `pip wheel` of a stage's RUN instructions, as argument lists."""
    commands = []
    for keyword, rest in stage.instructions:
        if keyword != "RUN":
            continue
        for part in re.split(r"&&|;|\|\|", rest):
            words = shlex.split(part)
            for i, word in enumerate(words):
                if word.endswith("pip") and i + 1 < len(words) and words[i + 1] in ("install", "wheel"):
                    commands.append(words[i:])
    return commands


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request) -> tuple[str, list[Stage]]:
    return request.param, parse((DOCKER / request.param).read_text())


def test_both_variants_exist():
    assert DOCKERFILES == ["Dockerfile", "Dockerfile.cuda"]


def test_every_base_image_is_pinned_by_tag(dockerfile):
    name, stages = dockerfile
    assert len(stages) >= 2, f"{name}: multi-stage expected"
    stage_names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in stage_names:
            continue
        image, _, tag = stage.base.rpartition(":") if "@" not in stage.base else (stage.base, "", "digest")
        assert image and tag and tag != "latest" and "$" not in stage.base, f"{name}: unpinned base {stage.base}"
        assert re.search(r"\d+\.\d+", tag) or tag == "digest", f"{name}: tag without a version: {stage.base}"


def test_final_stage_runs_as_non_root_without_build_tools(dockerfile):
    name, stages = dockerfile
    final = stages[-1]
    users = [rest for keyword, rest in final.instructions if keyword == "USER"]
    assert users, f"{name}: the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{name}: final USER {users[-1]}"
    for keyword, rest in final.instructions:
        if keyword == "RUN":
            apt = re.findall(r"(?:apt-get|apt) install[^&;]*", rest)
            installs = " ".join(apt + [" ".join(c) for c in pip_commands(final)])
            assert not BUILD_TOOLS.search(installs), f"{name}: build tool installed in the final stage: {installs}"


def test_every_pip_install_is_constrained(dockerfile):
    name, stages = dockerfile
    commands = [cmd for stage in stages for cmd in pip_commands(stage)]
    assert commands, f"{name}: no pip install found"
    for cmd in commands:
        flags = [cmd[i + 1] for i, word in enumerate(cmd[:-1]) if word in ("-c", "--constraint")]
        assert any(f.endswith("constraints.txt") for f in flags), f"{name}: unconstrained: {' '.join(cmd)}"


def test_torch_comes_from_the_matching_pytorch_index(dockerfile):
    name, stages = dockerfile
    torch = [cmd for stage in stages for cmd in pip_commands(stage) if any(w.startswith("torch==") for w in cmd)]
    assert torch, f"{name}: torch is not installed explicitly"
    for cmd in torch:
        assert "torch==2.13.0" in cmd
        text = " ".join(cmd)
        dockerfile_text = (DOCKER / name).read_text()
        if name == "Dockerfile":
            assert "--index-url https://download.pytorch.org/whl/cpu" in text
        else:
            index = re.search(r"ARG TORCH_INDEX=(\S+)", dockerfile_text).group(1)
            cuda = re.search(r"-cu(\d+)", stages[-1].base).group(1)
            assert index == f"https://download.pytorch.org/whl/cu{cuda}", "torch's CUDA must match the base's"


def test_copied_paths_exist_and_are_in_the_build_context(dockerfile):
    name, stages = dockerfile
    ignore = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
                keep = negate
        return keep

    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword != "COPY" or "--from=" in rest:
                continue
            sources = [w for w in shlex.split(rest) if not w.startswith("--")][:-1]
            for src in sources:
                assert (REPO / src).exists(), f"{name}: COPY {src}: no such path"
                assert included(src), f"{name}: COPY {src} is excluded by {name}.dockerignore"
    for excluded in (".venv", ".git", "models/molm3d-small", "protos/gen/python", "tests/unit"):
        assert not included(excluded), f"{name}: {excluded} would be sent to the daemon"


def test_the_image_knows_where_checkpoints_and_assets_are(dockerfile):
    name, stages = dockerfile
    text = (DOCKER / name).read_text()
    assert "MOLM3D_CHECKPOINT" in text  # documented as a mount, not baked in
    env = " ".join(rest for keyword, rest in stages[-1].instructions if keyword == "ENV")
    assert "MOLM3D_CACHE_DIR=/opt/molm3d/cache" in env and "HF_HUB_OFFLINE=1" in env
    assert any(keyword == "COPY" and "/opt/molm3d/cache" in rest for keyword, rest in stages[-1].instructions)
