"""The Grafana dashboard queries metrics the services really export, with labels they really set."""

from __future__ import annotations

import ast
import json
import re

from .conftest import REPO

DASHBOARD = REPO / "infra" / "grafana" / "molm3d-stages.json"
# Ray exports a metric NAME of ray.serve.metrics / ray.util.metrics as ray_NAME (+ _bucket/_sum/_count
# for histograms) and adds these tags itself.
RAY_TAGS = {"application", "deployment", "replica", "route", "le"}
# Announced in the bulk-worker issue, not in the code yet: checked like the others once defined.
PENDING = {"molm3d_bulk_items_total": {"outcome"}}


def defined_metrics() -> dict[str, set[str]]:
    """molm3d metric name -> tag keys, from every Counter/Gauge/Histogram(...) call under services/."""
    found: dict[str, set[str]] = {}
    for path in (REPO / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            first = node.args[0] if node.args else None
            if callee not in {"Counter", "Gauge", "Histogram"} or not isinstance(first, ast.Constant):
                continue
            if not str(first.value).startswith("molm3d_"):
                continue
            tags = next((kw.value for kw in node.keywords if kw.arg == "tag_keys"), None)
            found[first.value] = set(ast.literal_eval(tags)) if tags is not None else set()
    return found


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p.get("targets") for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    return exprs


def test_services_define_the_stage_metrics():
    metrics = defined_metrics()
    assert metrics["molm3d_request_latency_seconds"] == {"stage", "method"}
    assert {"molm3d_batch_size", "molm3d_requests_in_flight", "molm3d_errors_total"} <= set(metrics)


def test_dashboard_queries_exported_metrics_by_their_labels():
    metrics = {**PENDING, **defined_metrics()}
    used: dict[str, set[str]] = {}
    for expr in queries():
        for name in re.findall(r"\bray_(molm3d_\w+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in metrics, f"{expr}: ray_{name} is not a metric the services define"
            used.setdefault(base, set())
        # labels in `by (...)` and in selectors of molm3d metrics
        for names, selector in re.findall(r"by \(([^)]*)\)|\{([^}]*)\}", expr):
            labels = {x.strip() for x in names.split(",") if x.strip()} | set(re.findall(r"(\w+)\s*=~?", selector))
            if "ray_molm3d_" in expr:
                for base in {re.sub(r"_(bucket|sum|count)$", "", n) for n in re.findall(r"ray_(molm3d_\w+)", expr)}:
                    unknown = labels - metrics[base] - RAY_TAGS
                    assert not unknown, f"{expr}: {base} has no label(s) {unknown} (tags: {metrics[base]})"
    assert {"molm3d_request_latency_seconds", "molm3d_batch_size", "molm3d_errors_total"} <= set(used)
    assert "molm3d_bulk_items_total" in used
