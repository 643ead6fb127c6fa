"""The Kubernetes deployment (deploy/kubernetes/): schemas, RBAC, wiring, alerts, dashboard,
and the broker's TLS + ACL configuration run on a real Mosquitto.

The manifests are rendered by a small reader of kustomization.yaml (the features it uses:
namespace, resources, configMapGenerator without hash suffixes); where kubectl or kustomize
is installed, a test checks that the real kustomize renders the same objects.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from agent.settings import parse_settings as parse_agent_settings
from coordinator.governance.policy import parse_policy
from coordinator.kube import API_CALLS_USED, API_GROUP_OF, UNHEALTHY_TAINT_KEY
from coordinator.lifecycle import Lifecycle
from coordinator.settings import parse_settings as parse_coordinator_settings
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.wire import Kind, cluster_health_topic, node_topic
from tests.brokers import free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
NAMESPACE = "gpuwarden"
SCHEMA_VERSIONS = ("1.30", "1.33")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
# Created by the operator (or cert-manager) before applying, as deploy/kubernetes/README.md says.
OPERATOR_SECRETS = {
    "gpuwarden-mqtt-ca",
    "gpuwarden-mqtt-server-tls",
    "gpuwarden-mqtt-coordinator-tls",
}
Obj = dict[str, Any]

# --- rendering ----------------------------------------------------------------------------

_SUPPORTED_KUSTOMIZE_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "generatorOptions",
    "configMapGenerator",
}


def render(directory: Path = DEPLOY) -> list[Obj]:
    """What ``kustomize build`` gives for the features this kustomization uses; a feature it
    does not know fails loudly rather than rendering something else."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _SUPPORTED_KUSTOMIZE_KEYS
    assert not unknown, f"render() does not know {unknown}: teach it, or compare with kustomize"
    namespace = kustomization.get("namespace")
    objects: list[Obj] = []
    for resource in kustomization.get("resources", []):
        objects += [d for d in yaml.safe_load_all((directory / resource).read_text()) if d]
    options = kustomization.get("generatorOptions", {})
    assert options.get("disableNameSuffixHash") is True, "render() does not compute name hashes"
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files", "options"}, generator
        data = {}
        for entry in generator["files"]:
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (directory / path).read_text()
        metadata: Obj = {"name": generator["name"]}
        labels = generator.get("options", {}).get("labels")
        if labels:
            metadata["labels"] = labels
        objects.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        )
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj["metadata"]["namespace"] = namespace
    return objects


RENDERED = render()


def objects(kind: str) -> list[Obj]:
    return [o for o in RENDERED if o["kind"] == kind]


def one(kind: str, name: str) -> Obj:
    found = [o for o in objects(kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(workload: Obj, name: str) -> Obj:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def literal_env(c: Obj, placeholders: dict[str, str] | None = None) -> dict[str, str]:
    """The container's env as the process sees it; downward-API values from ``placeholders``."""
    env = {}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif placeholders and var["name"] in placeholders:
            env[var["name"]] = placeholders[var["name"]]
    return env


def mount_of(workload: Obj, c: Obj, volume: str) -> str:
    return str(next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume))


def volume(workload: Obj, name: str) -> Obj:
    return next(v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == name)


AGENT = one("DaemonSet", "gpuwarden-agent")
COORDINATOR = one("StatefulSet", "gpuwarden-coordinator")
BROKER = one("Deployment", "gpuwarden-mqtt")

# --- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_builtin_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate"
    )
    checked = 0
    for obj in RENDERED:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked == len(RENDERED) - sum(o["kind"] in CRD_KINDS for o in RENDERED)


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def test_render_agrees_with_kustomize() -> None:
    command = _kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed (apt-get install -y kubectl)")
    result = subprocess.run(
        [*command, str(DEPLOY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr

    def canonical(objs: list[Obj]) -> list[str]:
        return sorted(json.dumps(o, sort_keys=True) for o in objs)

    assert canonical([d for d in yaml.safe_load_all(result.stdout) if d]) == canonical(RENDERED)


def test_every_namespaced_object_lives_in_the_gpuwarden_namespace() -> None:
    assert one("Namespace", NAMESPACE)
    for obj in RENDERED:
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_object_names_are_unique_per_kind() -> None:
    keys = [(o["kind"], o["metadata"]["name"]) for o in RENDERED]
    assert len(keys) == len(set(keys))


# --- RBAC ---------------------------------------------------------------------------------


def granted(role: Obj) -> set[tuple[str, str, str]]:
    """(verb, resource, apiGroup) for every rule; wildcards are refused outright."""
    pairs = set()
    for rule in role["rules"]:
        for field in ("verbs", "resources", "apiGroups"):
            assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    pairs.add((verb, resource, group))
    return pairs


def _expected(resources: set[str] | None = None, exclude: set[str] | None = None) -> set[Any]:
    return {
        (verb, resource, API_GROUP_OF[resource])
        for verb, resource in API_CALLS_USED
        if (resources is None or resource in resources)
        and (exclude is None or resource not in exclude)
    }


def test_cluster_role_grants_exactly_the_cluster_wide_calls_the_coordinator_makes() -> None:
    assert granted(one("ClusterRole", "gpuwarden-coordinator")) == _expected(exclude={"leases"})


def test_namespaced_role_grants_exactly_the_lease_calls() -> None:
    role = one("Role", "gpuwarden-coordinator-leader-election")
    assert granted(role) == _expected(resources={"leases"})


def test_lease_role_names_the_lease_the_coordinator_uses() -> None:
    role = one("Role", "gpuwarden-coordinator-leader-election")
    lease = literal_env(container(COORDINATOR, "coordinator"))["GPUWARDEN_LEASE_NAME"]
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert named
    assert all(r["resourceNames"] == [lease] for r in named)
    # create cannot be limited by name: a rule that tried would deny it
    assert all("create" not in r["verbs"] for r in named)


@pytest.mark.parametrize(
    ("binding_kind", "role_kind", "name"),
    [
        ("ClusterRoleBinding", "ClusterRole", "gpuwarden-coordinator"),
        ("RoleBinding", "Role", "gpuwarden-coordinator-leader-election"),
    ],
)
def test_roles_are_bound_to_the_coordinators_service_account(
    binding_kind: str, role_kind: str, name: str
) -> None:
    binding = one(binding_kind, name)
    account = COORDINATOR["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role_kind,
        "name": name,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert one("ServiceAccount", account)


def test_only_the_coordinator_can_reach_the_kubernetes_api() -> None:
    for workload in (AGENT, BROKER):
        spec = workload["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False
    assert one("ServiceAccount", "gpuwarden-agent")["automountServiceAccountToken"] is False


# --- the agent DaemonSet ------------------------------------------------------------------


def test_agent_runs_only_on_gpu_nodes() -> None:
    spec = AGENT["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["runtimeClassName"] == "nvidia"


def test_agent_tolerates_gpuwardens_own_taint_and_the_gpu_taint() -> None:
    tolerations = AGENT["spec"]["template"]["spec"]["tolerations"]
    keys = {(t["key"], t["operator"], t.get("effect")) for t in tolerations}
    assert (UNHEALTHY_TAINT_KEY, "Exists", "NoSchedule") in keys
    assert ("nvidia.com/gpu", "Exists", "NoSchedule") in keys


def test_agent_takes_its_node_name_from_the_downward_api() -> None:
    [var] = [v for v in container(AGENT, "agent")["env"] if v["name"] == "NODE_NAME"]
    assert var["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_agent_asks_the_nvidia_runtime_for_nvml_only() -> None:
    env = literal_env(container(AGENT, "agent"))
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"


def test_agent_reads_the_hosts_kmsg_read_only() -> None:
    c = container(AGENT, "agent")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "kmsg")
    assert mount["readOnly"] is True
    assert volume(AGENT, "kmsg")["hostPath"] == {"path": "/dev/kmsg", "type": "CharDevice"}
    assert literal_env(c)["GPUWARDEN_KMSG"] == mount["mountPath"]
    # the device cgroup refuses /dev/kmsg to an unprivileged container
    assert c["securityContext"]["privileged"] is True


def test_agent_env_parses_into_settings_that_keep_state_on_the_host() -> None:
    c = container(AGENT, "agent")
    settings = parse_agent_settings([], literal_env(c, {"NODE_NAME": "gpu-node-7"}))
    state_mount = Path(mount_of(AGENT, c, "state"))
    assert volume(AGENT, "state")["hostPath"]["path"] == "/var/lib/gpuwarden"
    assert settings.node == "gpu-node-7"
    assert settings.spool_dir is not None and settings.spool_dir.is_relative_to(state_mount)
    assert settings.xid_history is not None and settings.xid_history.is_relative_to(state_mount)
    assert settings.broker.tls and settings.broker.tls_cert and settings.broker.tls_key
    assert settings.http is not None


def test_agent_probes_and_metrics_port_match_its_http_listener() -> None:
    c = container(AGENT, "agent")
    settings = parse_agent_settings([], literal_env(c, {"NODE_NAME": "n"}))
    assert settings.http is not None
    [port] = c["ports"]
    assert port["containerPort"] == settings.http.port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    service = one("Service", "gpuwarden-agent")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


@pytest.mark.parametrize("name", ["agent", "coordinator", "mosquitto"])
def test_every_container_sets_requests_and_limits(name: str) -> None:
    workload = {"agent": AGENT, "coordinator": COORDINATOR, "mosquitto": BROKER}[name]
    resources = container(workload, name)["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}


def test_workloads_use_the_release_images() -> None:
    assert container(AGENT, "agent")["image"] == "ghcr.io/gpuwarden/agent:0.1.0"
    assert container(COORDINATOR, "coordinator")["image"] == "ghcr.io/gpuwarden/coordinator:0.1.0"


# --- the coordinator ----------------------------------------------------------------------


def coordinator_settings() -> Any:
    c = container(COORDINATOR, "coordinator")
    env = literal_env(c, {"POD_NAME": "gpuwarden-coordinator-0", "POD_NAMESPACE": NAMESPACE})
    return parse_coordinator_settings(c["args"][1:], env)


def test_coordinator_runs_two_replicas_in_cluster_on_all_interfaces() -> None:
    c = container(COORDINATOR, "coordinator")
    assert COORDINATOR["spec"]["replicas"] == 2
    assert c["args"][0] == "coordinator"
    settings = coordinator_settings()
    assert settings.kube == "in-cluster"
    assert settings.http is not None and settings.http.host == "0.0.0.0"


def test_coordinator_identity_and_lease_namespace_come_from_the_downward_api() -> None:
    env = {v["name"]: v for v in container(COORDINATOR, "coordinator")["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    settings = coordinator_settings()
    assert settings.identity == "gpuwarden-coordinator-0"
    assert settings.lease_namespace == NAMESPACE


def test_coordinator_state_is_a_persistent_volume_per_replica() -> None:
    c = container(COORDINATOR, "coordinator")
    [claim] = COORDINATOR["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert coordinator_settings().state_dir == Path(
        mount_of(COORDINATOR, c, claim["metadata"]["name"])
    )


def test_coordinator_container_is_locked_down() -> None:
    pod = COORDINATOR["spec"]["template"]["spec"]
    sc = container(COORDINATOR, "coordinator")["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_coordinator_probes_use_its_http_port() -> None:
    c = container(COORDINATOR, "coordinator")
    settings = coordinator_settings()
    [port] = c["ports"]
    assert port["containerPort"] == settings.http.port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}


def test_policy_configmap_is_a_valid_policy_mounted_where_the_coordinator_reads_it() -> None:
    c = container(COORDINATOR, "coordinator")
    [(key, text)] = one("ConfigMap", "gpuwarden-policy")["data"].items()
    policy = parse_policy(text, "gpuwarden-policy")
    assert policy.teams and policy.priority_classes
    assert volume(COORDINATOR, "policy")["configMap"]["name"] == "gpuwarden-policy"
    assert coordinator_settings().policy == Path(mount_of(COORDINATOR, c, "policy")) / key


# --- wiring between the pieces ------------------------------------------------------------

WORKLOADS = [
    one(kind, name)
    for kind, name in (
        ("DaemonSet", "gpuwarden-agent"),
        ("StatefulSet", "gpuwarden-coordinator"),
        ("Deployment", "gpuwarden-mqtt"),
    )
]


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w["metadata"]["name"])
def test_every_mount_has_a_volume_and_every_volume_source_exists(workload: Obj) -> None:
    spec = workload["spec"]["template"]["spec"]
    names = {v["name"] for v in spec.get("volumes", [])} | {
        t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
    }
    for c in spec["containers"]:
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in names
    config_maps = {o["metadata"]["name"] for o in objects("ConfigMap")}
    for v in spec.get("volumes", []):
        if "configMap" in v:
            assert v["configMap"]["name"] in config_maps
        if "secret" in v:
            assert v["secret"]["secretName"] in OPERATOR_SECRETS


def test_the_readme_tells_the_operator_to_create_every_secret() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for secret in OPERATOR_SECRETS:
        assert secret in readme


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w["metadata"]["name"])
def test_selectors_match_the_pod_labels(workload: Obj) -> None:
    selector = workload["spec"]["selector"]["matchLabels"]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


@pytest.mark.parametrize("service", objects("Service"), ids=lambda s: s["metadata"]["name"])
def test_every_service_selects_a_workload_and_targets_a_named_container_port(
    service: Obj,
) -> None:
    selector = service["spec"]["selector"]
    [workload] = [
        w
        for w in WORKLOADS
        if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
    ]
    port_names = {
        p["name"]
        for c in workload["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names


def test_daemons_reach_the_broker_through_its_service_with_tls() -> None:
    service = one("Service", "gpuwarden-mqtt")
    agent = parse_agent_settings([], literal_env(container(AGENT, "agent"), {"NODE_NAME": "n"}))
    for broker in (agent.broker, coordinator_settings().broker):
        assert broker.tls
        assert broker.host == service["metadata"]["name"]
        assert broker.port == service["spec"]["ports"][0]["port"]


def _broker_conf() -> str:
    return str(one("ConfigMap", "gpuwarden-mosquitto")["data"]["mosquitto.conf"])


def _conf_values(key: str) -> list[str]:
    return [
        line.split(None, 1)[1] for line in _broker_conf().splitlines() if line.startswith(f"{key} ")
    ]


def test_broker_config_names_files_where_the_pod_mounts_them() -> None:
    c = container(BROKER, "mosquitto")
    config = Path(mount_of(BROKER, c, "config"))
    tls = Path(mount_of(BROKER, c, "tls"))
    data = Path(mount_of(BROKER, c, "data"))
    cm = one("ConfigMap", "gpuwarden-mosquitto")["data"]
    [acl] = _conf_values("acl_file")
    assert Path(acl).parent == config and Path(acl).name in cm
    for key in ("cafile", "certfile", "keyfile"):
        [path] = _conf_values(key)
        assert Path(path).parent == tls
    [persistence] = _conf_values("persistence_location")
    assert Path(persistence) == data
    [listener] = _conf_values("listener")
    assert int(listener) == c["ports"][0]["containerPort"]


def test_broker_requires_client_certificates_and_takes_the_user_from_them() -> None:
    assert _conf_values("require_certificate") == ["true"]
    assert _conf_values("use_identity_as_username") == ["true"]
    assert _conf_values("allow_anonymous") == ["false"]


# --- monitoring: ServiceMonitor, PrometheusRule, Grafana ----------------------------------


@pytest.mark.parametrize("monitor", objects("ServiceMonitor"), ids=lambda m: m["metadata"]["name"])
def test_service_monitor_selects_a_service_and_scrapes_a_port_it_has(monitor: Obj) -> None:
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    [service] = [
        s for s in objects("Service") if selector.items() <= s["metadata"]["labels"].items()
    ]
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"


RULES = [
    rule
    for group in one("PrometheusRule", "gpuwarden")["spec"]["groups"]
    for rule in group["rules"]
]


def test_prometheus_rules_have_the_operators_shape() -> None:
    rule_object = one("PrometheusRule", "gpuwarden")
    assert rule_object["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule_object["spec"]["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    for rule in RULES:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
    names = [r["alert"] for r in RULES]
    assert len(names) == len(set(names))


def test_alerts_cover_the_conditions_an_operator_must_hear_about() -> None:
    assert {r["alert"] for r in RULES} >= {
        "GpuwardenRemediationPaused",
        "GpuwardenNodesPendingRecovery",
        "GpuwardenAgentSilent",
        "GpuwardenIngestRejectsRising",
        "GpuwardenCoordinatorWithoutLeader",
    }


DASHBOARD_CONFIGMAP = one("ConfigMap", "gpuwarden-grafana-dashboard")
[DASHBOARD_JSON] = DASHBOARD_CONFIGMAP["data"].values()


def dashboard() -> Obj:
    parsed: Obj = json.loads(DASHBOARD_JSON)
    return parsed


def dashboard_panels() -> list[Obj]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_grafana_dashboard_is_labelled_for_the_grafana_sidecar() -> None:
    assert DASHBOARD_CONFIGMAP["metadata"]["labels"] == {"grafana_dashboard": "1"}


def test_grafana_dashboard_parses_with_unique_panel_ids_and_queries_on_every_panel() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in dashboard_panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip()
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables, f"{panel['title']}: ${var} is not defined"


def _exposed_metric_names() -> set[str]:
    """Every series name the code can expose: each prometheus_client metric's name and the
    suffixes the client adds to it."""
    suffixes = {
        "Counter": ("_total", "_created"),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count", "_created"),
        "Summary": ("", "_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for package in ("agent", "coordinator", "gpuwarden_common"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                first = node.args[0]
                if (
                    kind in suffixes
                    and isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                ):
                    base = first.value.removesuffix("_total") if kind == "Counter" else first.value
                    names |= {base + suffix for suffix in suffixes[kind]}
    return names


def _queries() -> list[str]:
    return [r["expr"] for r in RULES] + [
        t["expr"] for p in dashboard_panels() for t in p["targets"]
    ]


def test_every_metric_the_alerts_and_dashboard_query_exists_in_the_code() -> None:
    exposed = _exposed_metric_names()
    assert "gpuwarden_ingest_rejected_total" in exposed  # the scan itself still works
    queried = {m for q in _queries() for m in re.findall(r"\bgpuwarden_[a-z0-9_]+", q)}
    assert queried
    assert queried <= exposed, sorted(queried - exposed)


def test_label_values_the_queries_match_are_values_the_code_produces() -> None:
    literals = set()
    for package in ("agent", "coordinator", "gpuwarden_common"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    literals.add(node.value)
    literals |= {state.value for state in Lifecycle}
    service_names = {s["metadata"]["name"] for s in objects("Service")}
    for query in _queries():
        for label, values in re.findall(r'(\w+)=~?"([^"$]+)"', query):
            for value in values.split("|"):
                if label == "job":
                    assert value in service_names, query
                else:
                    assert value in literals, f"{label}={value!r} in {query}"


# --- the broker's TLS and ACL, on a real Mosquitto ----------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(ca_dir: Path, name: str, cn: str, extensions: str) -> tuple[Path, Path]:
    ext = ca_dir / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n" + extensions
    )
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=ca_dir,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        f"{name}.crt",
        "-extfile",
        ext.name,
        cwd=ca_dir,
    )
    return ca_dir / f"{name}.crt", ca_dir / f"{name}.key"


CLIENTS = ("node-a", "node-b", "gpuwarden-coordinator")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, the broker's server certificate (the names the Service gives it, plus localhost
    for the test) and one client certificate per CN in CLIENTS."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing: apt-get install -y openssl")
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=gpuwarden test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    _issue(
        d,
        "tls",
        "gpuwarden-mqtt",
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:gpuwarden-mqtt,DNS:localhost\n",
    )
    for cn in CLIENTS:
        _issue(d, cn, cn, "extendedKeyUsage=clientAuth\n")
    return d


@contextlib.contextmanager
def deployed_broker(pki: Path, workdir: Path) -> Iterator[int]:
    """Mosquitto running the deployment's own mosquitto.conf and acl, with the pod's paths
    moved into ``workdir`` and the listener onto a free loopback port."""
    cm = one("ConfigMap", "gpuwarden-mosquitto")["data"]
    port = free_port()
    (workdir / "data").mkdir()
    (workdir / "acl").write_text(cm["acl"])
    conf = _broker_conf()
    for old, new in (
        ("listener 8883\n", f"listener {port} 127.0.0.1\n"),
        ("/mosquitto/config/acl", str(workdir / "acl")),
        ("/mosquitto/tls/", f"{pki}/"),
        ("/mosquitto/data/", f"{workdir}/data/"),
        ("log_dest stdout", f"log_dest file {workdir}/mosquitto.log"),
    ):
        assert old in conf, f"mosquitto.conf no longer has {old!r}: update this test"
        conf = conf.replace(old, new)
    # Started as root, mosquitto would switch to the user "mosquitto", who cannot read the
    # test's private directory; the pod runs it as a non-root user, which never switches.
    conf = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n{conf}"
    (workdir / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen(
        [mosquitto_binary(), "-c", str(workdir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (workdir / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not open its port"
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def broker_port(pki: Path, tmp_path: Path) -> Iterator[int]:
    with deployed_broker(pki, tmp_path) as port:
        yield port


def client_settings(pki: Path, port: int, cn: str | None) -> BrokerSettings:
    """What a daemon builds from its --tls-* flags; no certificate when ``cn`` is None."""
    return BrokerSettings.from_url(
        f"mqtts://localhost:{port}",
        tls_ca=str(pki / "ca.crt"),
        tls_cert=None if cn is None else str(pki / f"{cn}.crt"),
        tls_key=None if cn is None else str(pki / f"{cn}.key"),
    )


@contextlib.asynccontextmanager
async def connected(pki: Path, port: int, cn: str) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(**client_settings(pki, port, cn).client_kwargs(), timeout=10) as c:
        yield c


async def received_until(client: aiomqtt.Client, marker: str) -> list[str]:
    """Topics the client receives up to and including ``marker``."""
    topics: list[str] = []

    async def collect() -> list[str]:
        async for message in client.messages:
            topics.append(message.topic.value)
            if message.topic.value == marker:
                return topics
        return topics

    return await asyncio.wait_for(collect(), 10)


@pytest.mark.broker
async def test_a_node_writes_its_own_topics_and_nothing_else(pki: Path, broker_port: int) -> None:
    cluster = "default"
    own_state = node_topic(cluster, "node-a", Kind.STATE)
    own_events = node_topic(cluster, "node-a", Kind.EVENTS)
    forbidden = [
        node_topic(cluster, "node-b", Kind.STATE),  # another node's topic
        node_topic(cluster, "node-a", Kind.VERDICT),  # the coordinator's word on it
        node_topic(cluster, "node-a", Kind.ACK),  # it cannot acknowledge its own events
        cluster_health_topic(cluster),
    ]
    async with (
        connected(pki, broker_port, "gpuwarden-coordinator") as coordinator,
        connected(pki, broker_port, "node-a") as node,
    ):
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await node.publish(own_state, b"{}", qos=1)
        for topic in forbidden:
            await node.publish(topic, b"{}", qos=1)
        # one connection's messages arrive in order: the forbidden ones would precede this
        await node.publish(own_events, b"{}", qos=1)
        topics = await received_until(coordinator, own_events)
    assert topics == [own_state, own_events]


@pytest.mark.broker
async def test_a_node_reads_its_own_acknowledgements_and_nothing_else(
    pki: Path, broker_port: int
) -> None:
    verdict = node_topic("default", "node-a", Kind.VERDICT)
    other_state = node_topic("default", "node-b", Kind.STATE)
    other_ack = node_topic("default", "node-b", Kind.ACK)
    own_ack = node_topic("default", "node-a", Kind.ACK)
    async with (
        connected(pki, broker_port, "gpuwarden-coordinator") as coordinator,
        connected(pki, broker_port, "node-a") as node_a,
        connected(pki, broker_port, "node-b") as node_b,
    ):
        await node_a.subscribe("gpuwarden/v1/#", qos=1)
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await coordinator.publish(verdict, b"{}", qos=1)
        await coordinator.publish(other_ack, b"{}", qos=1)
        await node_b.publish(other_state, b"{}", qos=1)
        await received_until(coordinator, other_state)
        await coordinator.publish(own_ack, b"{}", qos=1)
        # one connection's messages arrive in order: the forbidden ones would precede this
        assert await received_until(node_a, own_ack) == [own_ack]


@pytest.mark.broker
async def test_the_coordinator_reads_all_and_writes_verdicts_acks_and_cluster_health(
    pki: Path, broker_port: int
) -> None:
    verdict = node_topic("default", "node-a", Kind.VERDICT)
    ack = node_topic("default", "node-a", Kind.ACK)
    health = cluster_health_topic("default")
    async with connected(pki, broker_port, "gpuwarden-coordinator") as coordinator:
        await coordinator.subscribe("gpuwarden/v1/#", qos=1)
        await coordinator.publish(verdict, b"{}", qos=1)
        await coordinator.publish(ack, b"{}", qos=1)
        await coordinator.publish(health, b"{}", qos=1)
        assert await received_until(coordinator, health) == [verdict, ack, health]


@pytest.mark.broker
def test_a_client_without_a_certificate_is_refused(pki: Path, broker_port: int) -> None:
    # Raw TLS with the daemons' own context: paho reports this refusal only as a connect
    # timeout, which would not tell a refusal from a slow broker.
    context = client_settings(pki, broker_port, None).ssl_context()
    assert context is not None
    with (
        socket.create_connection(("127.0.0.1", broker_port), 5) as raw,
        pytest.raises(ssl.SSLError, match=r"(?i)certificate|handshake"),
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.recv(1)  # TLS 1.3 delivers the broker's refusal after the handshake
