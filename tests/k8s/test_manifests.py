"""The kustomize overlays render, every object validates (core kinds strictly, custom resources
against their CRDs), and the properties the platform relies on hold in each overlay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import OVERLAYS, find, one
from .validation import ManifestError, crd_schemas, kustomize, validate

FIXTURES = Path(__file__).with_name("fixtures")
CUSTOM_KINDS = {
    ("ray.io/v1", "RayService"),
    ("kafka.strimzi.io/v1", "Kafka"),
    ("kafka.strimzi.io/v1", "KafkaNodePool"),
    ("kafka.strimzi.io/v1", "KafkaTopic"),
    ("kafka.strimzi.io/v1", "KafkaUser"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def ray_pod_templates(rayservice: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """group name ("head" for the head) -> pod template of the RayService's cluster."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]["template"]}
    groups.update({g["groupName"]: g["template"] for g in cluster.get("workerGroupSpecs", [])})
    return groups


def containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(owner, container) for every container the overlay runs (Deployments and Ray groups)."""
    out = []
    for dep in find(objects, "Deployment"):
        out += [(dep["metadata"]["name"], c) for c in dep["spec"]["template"]["spec"]["containers"]]
    for rs in find(objects, "RayService"):
        for group, template in ray_pod_templates(rs).items():
            out += [(f"ray/{group}", c) for c in template["spec"]["containers"]]
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- rendering and schema validation -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(rendered, overlay):
    objects = rendered[overlay]
    kinds = {(o["apiVersion"], o["kind"]) for o in objects}
    assert kinds >= CUSTOM_KINDS, f"missing custom resources: {CUSTOM_KINDS - kinds}"
    took = {validate(o) for o in objects}
    assert took == {"core", "crd"}


def test_the_crds_in_the_repo_serve_what_the_manifests_use():
    assert set(crd_schemas()) >= CUSTOM_KINDS


def test_base_renders_alone(k8s_copy):
    objects = kustomize(k8s_copy / "base")
    assert one(objects, "RayService", "molm3d")["spec"]["serveConfigV2"]


def test_a_core_object_with_an_unknown_field_is_rejected():
    (obj,) = yaml.safe_load_all((FIXTURES / "broken-core-unknown-field.yaml").read_text())
    with pytest.raises(ManifestError, match=r"imagePullPolicyy|Additional properties"):
        validate(obj)


def test_a_custom_resource_with_a_wrong_type_is_rejected():
    (obj,) = yaml.safe_load_all((FIXTURES / "broken-cr-wrong-type.yaml").read_text())
    with pytest.raises(ManifestError, match="partitions"):
        validate(obj)


def test_a_custom_resource_with_an_unknown_field_is_rejected(rendered):
    rayservice = json.loads(json.dumps(one(rendered["prod"], "RayService")))
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(ManifestError, match="gpus"):
        validate(rayservice)


def test_an_unknown_kind_is_rejected():
    (obj,) = yaml.safe_load_all((FIXTURES / "broken-unknown-kind.yaml").read_text())
    with pytest.raises(ManifestError, match="unknown kind"):
        validate(obj)


def test_a_broken_overlay_fails_to_render(k8s_copy, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text(
        f"resources: [{k8s_copy / 'overlays' / 'dev'}]\npatches:\n  - path: missing.yaml\n"
    )
    with pytest.raises(ManifestError, match="kustomize"):
        kustomize(broken)


# -- what each overlay must guarantee ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_runs_as_non_root(rendered, overlay):
    objects = rendered[overlay]
    for owner, container in containers(objects):
        res = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{owner}/{container['name']}: {kind}"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, owner
    pod_specs = [d["spec"]["template"]["spec"] for d in find(objects, "Deployment")]
    pod_specs += [t["spec"] for rs in find(objects, "RayService") for t in ray_pod_templates(rs).values()]
    for spec in pod_specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
    autoscaler = one(objects, "RayService")["spec"]["rayClusterConfig"]["autoscalerOptions"]
    assert {"requests", "limits"} <= set(autoscaler["resources"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_set_and_one_per_ray_cluster(rendered, overlay):
    objects = rendered[overlay]
    images = {owner: c["image"] for owner, c in containers(objects)}
    assert all(":" in image and not image.startswith("molm3d-") for image in images.values()), images
    ray_images = {image for owner, image in images.items() if owner.startswith("ray/")}
    assert len(ray_images) == 1, f"Ray nodes must share Ray and Python versions: {ray_images}"
    expected = "cuda" if overlay == "prod" else "cpu"
    assert ray_images.pop().endswith(expected)
    assert images["molm3d-bulk-worker"].endswith("cpu")


def test_dev_is_cpu_only_and_small(rendered):
    rs = one(rendered["dev"], "RayService")
    groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["cpu"]
    assert groups[0]["maxReplicas"] == 1
    for owner, container in containers(rendered["dev"]):
        limits = container["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits, owner
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    gpus = [d.get("ray_actor_options", {}).get("num_gpus", 0) for a in serve["applications"] for d in a["deployments"]]
    assert not any(gpus)


def test_prod_places_encoder_and_lm_on_their_gpu_pools(rendered):
    rs = one(rendered["prod"], "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert list(groups) == ["cpu", "gpu-small", "gpu-large"]
    for name, group in groups.items():
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], name
        spec = group["template"]["spec"]
        assert spec["nodeSelector"] == {"molm3d.io/pool": name}
        limits = spec["containers"][0]["resources"]["limits"]
        if name == "cpu":
            assert "nvidia.com/gpu" not in limits
            continue
        assert limits["nvidia.com/gpu"] == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    # the custom Ray resource each GPU group advertises is the one its deployment asks for
    advertised = {n: json.loads(json.loads(g["rayStartParams"]["resources"])) for n, g in groups.items() if n != "cpu"}
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    options = {d["name"]: d["ray_actor_options"] for a in serve["applications"] for d in a["deployments"]}
    assert set(options["Encoder"]["resources"]) == set(advertised["gpu-small"]) == {"molm3d_small_gpu"}
    assert set(options["LM"]["resources"]) == set(advertised["gpu-large"]) == {"molm3d_large_gpu"}
    assert options["Encoder"]["num_gpus"] < 1 <= options["LM"]["num_gpus"]
    for cpu_stage in ("Conformer", "Retrieval", "Gateway"):
        assert not options[cpu_stage].get("num_gpus") and not options[cpu_stage].get("resources")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_get_token_and_checkpoint_from_the_environment(rendered, overlay):
    objects = rendered[overlay]
    secret = one(objects, "Secret")
    assert secret["metadata"]["name"].startswith("molm3d-api-token-")  # generated, hash-suffixed
    assert set(secret["data"]) == {"token"}
    for owner, container in containers(objects):
        env = env_of(container)
        assert env["MOLM3D_API_TOKEN"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "token"}, owner
        if owner.startswith("ray/"):
            assert "MOLM3D_CHECKPOINT" in env, owner
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/models"]["readOnly"] is True


def test_head_readiness_does_not_depend_on_serve(rendered):
    """KubeRay submits the Serve applications only once the head pod is Ready: a head probe on the
    Serve ports (8000/9000) would never pass. The head keeps KubeRay's injected Ray-health probes."""
    for overlay in OVERLAYS:
        head = one(rendered[overlay], "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
        container = head["template"]["spec"]["containers"][0]
        assert "readinessProbe" not in container and "livenessProbe" not in container
        assert head["rayStartParams"]["num-cpus"] == "0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_service_exposes_http_and_grpc_of_the_serving_head(rendered, overlay):
    objects = rendered[overlay]
    svc = one(objects, "Service", "molm3d-gateway")
    assert svc["spec"]["type"] == "ClusterIP"
    assert {(p["name"], p["port"]) for p in svc["spec"]["ports"]} == {("http", 8000), ("grpc", 9000)}
    assert svc["spec"]["selector"]["ray.io/node-type"] == "head"
    assert svc["spec"]["selector"]["ray.io/serve"] == "true"
    head = one(objects, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert set(svc["spec"]["selector"]) - {"ray.io/node-type", "ray.io/serve"} <= set(head["metadata"]["labels"])
    ports = {p["containerPort"] for p in head["spec"]["containers"][0]["ports"]}
    assert {8000, 9000, 8080} <= ports
    serve = yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])
    assert serve["http_options"]["host"] == "0.0.0.0" and serve["http_options"]["port"] == 8000
    assert serve["grpc_options"]["port"] == 9000 and serve["proxy_location"] == "HeadOnly"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered, overlay):
    policies = {p["metadata"]["name"]: p["spec"] for p in find(rendered[overlay], "NetworkPolicy")}
    deny = policies.pop("molm3d-default-deny-ingress")
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    # only the head's 8000/9000 are open to every source
    open_rules = [
        (name, rule) for name, spec in policies.items() for rule in spec.get("ingress", []) if not rule.get("from")
    ]
    assert [(n, sorted(p["port"] for p in r["ports"])) for n, r in open_rules] == [
        ("molm3d-gateway-public", [8000, 9000])
    ]
    assert policies["molm3d-gateway-public"]["podSelector"]["matchLabels"]["ray.io/node-type"] == "head"
    # Ray's internal ports: only from Ray pods
    internal = policies["molm3d-ray-internal"]
    assert internal["ingress"] == [{"from": [{"podSelector": internal["podSelector"]}]}]
    # Kafka: Strimzi derives the listener's policy from networkPolicyPeers
    (listener,) = one(rendered[overlay], "Kafka")["spec"]["kafka"]["listeners"]
    peers = [p["podSelector"]["matchLabels"] for p in listener["networkPolicyPeers"]]
    components = {p.get("app.kubernetes.io/component") for p in peers}
    assert components == {"bulk-worker", "ray", None}
    assert {"app.kubernetes.io/name": "keda-operator"} in peers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_is_kraft_with_a_tls_scram_listener_only(rendered, overlay):
    objects = rendered[overlay]
    kafka = one(objects, "Kafka", "molm3d")
    assert "zookeeper" not in kafka["spec"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    pools = find(objects, "KafkaNodePool")
    roles = {r for p in pools for r in p["spec"]["roles"]}
    assert roles == {"controller", "broker"}
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == "molm3d" for p in pools)
    topics = {t["spec"]["topicName"]: t["spec"] for t in find(objects, "KafkaTopic")}
    assert set(topics) == {"molm3d.jobs", "molm3d.results", "molm3d.dlq"}
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    for name, spec in topics.items():
        assert int(spec["config"]["retention.ms"]) >= 86_400_000, name
        assert spec["replicas"] <= brokers, name
        min_isr = int(kafka["spec"]["kafka"]["config"]["min.insync.replicas"])
        assert min_isr <= spec["replicas"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_users_have_least_privilege_acls(rendered, overlay):
    def acls(name: str) -> set[tuple[str, str, str, str]]:
        user = one(rendered[overlay], "KafkaUser", name)
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        return {
            (a["resource"]["type"], a["resource"]["name"], a["resource"].get("patternType", "literal"), op)
            for a in user["spec"]["authorization"]["acls"]
            for op in a["operations"]
        }

    assert acls("molm3d-worker") == {
        ("topic", "molm3d.jobs", "literal", "Read"),
        ("topic", "molm3d.jobs", "literal", "Describe"),
        ("group", "molm3d-bulk", "literal", "Read"),
        ("group", "molm3d-bulk", "literal", "Describe"),
        ("topic", "molm3d.results", "literal", "Write"),
        ("topic", "molm3d.results", "literal", "Describe"),
        ("topic", "molm3d.dlq", "literal", "Write"),
        ("topic", "molm3d.dlq", "literal", "Describe"),
    }
    # Submitting writes the job's items (jobs), its JobInfo (results) and the records that cannot be cut
    # out of the input (dlq); reading a job reads results and dlq (jobs.py: submit_records, JobReader).
    submit_and_read = {
        ("topic", "molm3d.jobs", "literal", "Write"),
        ("topic", "molm3d.jobs", "literal", "Describe"),
        ("topic", "molm3d.results", "literal", "Read"),
        ("topic", "molm3d.results", "literal", "Write"),
        ("topic", "molm3d.results", "literal", "Describe"),
        ("topic", "molm3d.dlq", "literal", "Read"),
        ("topic", "molm3d.dlq", "literal", "Write"),
        ("topic", "molm3d.dlq", "literal", "Describe"),
    }
    assert acls("molm3d-submitter") == submit_and_read | {
        ("group", "molm3d-fetch-", "prefix", "Read"),
        ("group", "molm3d-fetch-", "prefix", "Describe"),
    }
    assert acls("molm3d-gateway") == submit_and_read  # its JobReaders use no consumer group


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bulk_workers_scale_on_lag_within_the_partition_count(rendered, overlay):
    objects = rendered[overlay]
    namespace = one(objects, "Namespace")["metadata"]["name"]
    worker = one(objects, "Deployment", "molm3d-bulk-worker")
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["molm3d", "bulk", "worker"]
    args = container["command"][3:]
    assert args[args.index("--gateway") + 1] == "molm3d-gateway:9000"
    port = args[args.index("--health-port") + 1]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert str(container[probe]["httpGet"]["port"]) in {port, "health"}
    env = env_of(container)
    assert env["MOLM3D_KAFKA_BOOTSTRAP"] == "molm3d-kafka-bootstrap:9093"
    assert env["MOLM3D_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["MOLM3D_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    user = env["MOLM3D_KAFKA_USERNAME"]
    assert find(objects, "KafkaUser", user)
    assert env["MOLM3D_KAFKA_PASSWORD"]["secretKeyRef"] == {"name": user, "key": "password"}
    ca_mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["kafka-ca"]
    assert env["MOLM3D_KAFKA_SSL_CAFILE"] == f"{ca_mount}/ca.crt"
    ca_volume = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}["kafka-ca"]
    assert ca_volume["secret"]["secretName"] == "molm3d-cluster-ca-cert"  # Strimzi's <cluster>-cluster-ca-cert

    scaled = one(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert (meta["topic"], meta["consumerGroup"]) == ("molm3d.jobs", "molm3d-bulk")
    assert int(meta["lagThreshold"]) > 0
    assert meta["bootstrapServers"] == f"molm3d-kafka-bootstrap.{namespace}.svc:9093"
    assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
    jobs = next(t for t in find(objects, "KafkaTopic") if t["spec"]["topicName"] == "molm3d.jobs")
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= jobs["spec"]["partitions"]
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    params = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert params["password"] == {"parameter": "password", "name": user, "key": "password"}
    assert params["ca"]["name"] == "molm3d-cluster-ca-cert"
    assert auth["spec"]["env"] == [
        {"parameter": "username", "name": "MOLM3D_KAFKA_USERNAME", "containerName": container["name"]}
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_pod_reaches_the_bulk_workers_kafka_as_the_gateway_user(rendered, overlay):
    """The gateway's HTTP bulk routes (in whichever Ray pod its replica lands) use the broker, security
    and CA of the bulk workers, as their own KafkaUser."""
    objects = rendered[overlay]
    worker = one(objects, "Deployment", "molm3d-bulk-worker")
    (worker_container,) = worker["spec"]["template"]["spec"]["containers"]
    worker_env = env_of(worker_container)
    shared = ("MOLM3D_KAFKA_BOOTSTRAP", "MOLM3D_KAFKA_SECURITY_PROTOCOL", "MOLM3D_KAFKA_SASL_MECHANISM")
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    for group, template in ray_pod_templates(one(objects, "RayService")).items():
        (container,) = template["spec"]["containers"]
        env = env_of(container)
        assert {k: env.get(k) for k in shared} == {k: worker_env[k] for k in shared}, group
        assert env["MOLM3D_KAFKA_USERNAME"] == "molm3d-gateway", group
        assert env["MOLM3D_KAFKA_PASSWORD"]["secretKeyRef"] == {"name": "molm3d-gateway", "key": "password"}, group
        ca_mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["kafka-ca"]
        assert env["MOLM3D_KAFKA_SSL_CAFILE"] == f"{ca_mount}/ca.crt", group
        ca_volume = {v["name"]: v for v in template["spec"]["volumes"]}["kafka-ca"]
        assert ca_volume["secret"] == volumes["kafka-ca"]["secret"], group
    assert find(objects, "KafkaUser", "molm3d-gateway")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_metrics_cover_every_ray_group(rendered, overlay):
    objects = rendered[overlay]
    rs = one(objects, "RayService")
    groups = [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    selectors = [p["spec"]["selector"]["matchLabels"] for p in find(objects, "PodDisruptionBudget")]
    assert {s.get("ray.io/group") for s in selectors} >= set(groups)
    assert any(s.get("ray.io/node-type") == "head" for s in selectors)
    assert any(s.get("app.kubernetes.io/component") == "bulk-worker" for s in selectors)
    monitor = one(objects, "ServiceMonitor")
    metrics_svc = one(objects, "Service", "molm3d-ray-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [metrics_svc["spec"]["ports"][0]["name"]]
    assert metrics_svc["spec"]["ports"][0]["port"] == 8080
    for template in ray_pod_templates(rs).values():
        assert metrics_svc["spec"]["selector"].items() <= template["metadata"]["labels"].items()
