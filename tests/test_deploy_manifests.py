"""The Kubernetes deployment (deploy/kubernetes/): every overlay rendered by the real kustomize
(``kubectl kustomize``) and checked against the Kubernetes schemas; RBAC, wiring, the webhook,
alerts and dashboard against the code. The broker's TLS and ACL run on a real Mosquitto in
tests/test_broker_acl.py.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.settings import parse_settings as parse_agent_settings
from coordinator.backends.kubernetes.contract import (
    API_CALLS_USED,
    API_GROUP_OF,
    UNHEALTHY_TAINT_KEY,
)
from coordinator.backends.kubernetes.csr import SIGNER_RBAC
from coordinator.governance.policy import parse_policy
from coordinator.lifecycle import Lifecycle
from coordinator.pods import GPU_RESOURCE
from coordinator.settings import parse_settings as parse_coordinator_settings
from coordinator.webhook_server import PATH as WEBHOOK_PATH
from gpuwarden_common.certs import SIGNER_NAME

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
BASE = DEPLOY / "base"
COMPONENTS = sorted(p.parent.name for p in (DEPLOY / "components").glob("*/kustomization.yaml"))
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
NAMESPACE = "gpuwarden"
SCHEMA_VERSIONS = ("1.30", "1.33")
# Custom resources: the Prometheus Operator's (monitoring) and cert-manager's
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Issuer", "Certificate"}
CLUSTER_SCOPED_KINDS = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
}  # fmt: skip
# Made by the operator before applying, or by the cert-manager component (README.md).
OPERATOR_SECRETS = {"gpuwarden-ca", "gpuwarden-mqtt-server-tls"}
Obj = dict[str, Any]

# --- rendering ----------------------------------------------------------------------------


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: scripts/test.sh installs it (apt-get install -y "
                    "kubernetes-client, or any kubectl >= 1.21 for kustomize components)")
    return found


@functools.cache
def render(directory: Path) -> tuple[Obj, ...]:
    """``kubectl kustomize directory``: what ``kubectl apply -k`` would send."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


@functools.cache
def render_with(*components: str) -> tuple[Obj, ...]:
    """The base with ``components``, through a throwaway overlay beside the tree."""
    with tempfile.TemporaryDirectory(dir=ROOT / "deploy") as overlay:
        here = Path(overlay)
        (here / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(BASE, here)],
            "components": [os.path.relpath(DEPLOY / "components" / c, here) for c in components],
        }))  # fmt: skip
        return render(here)


def variants() -> dict[str, tuple[Obj, ...]]:
    found = {"base": render(BASE)}
    found |= {f"base+{c}": render_with(c) for c in COMPONENTS}
    found |= {f"overlays/{o}": render(DEPLOY / "overlays" / o) for o in OVERLAYS}
    return found


RENDERED = list(render(BASE))
MONITORED = list(render_with("monitoring"))


def objects(kind: str, rendered: list[Obj] = RENDERED) -> list[Obj]:
    return [o for o in rendered if o["kind"] == kind]


def one(kind: str, name: str, rendered: list[Obj] = RENDERED) -> Obj:
    found = [o for o in objects(kind, rendered) if o["metadata"]["name"] == name]
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

# --- schemas, for every overlay ------------------------------------------------------------

VARIANTS = variants()


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_builtin_object_of_every_overlay_validates_against_the_schemas(
    variant: str, version: str
) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate"
    )
    builtin = [o for o in VARIANTS[variant] if o["kind"] not in CRD_KINDS]
    for obj in builtin:
        kubernetes_validate.validate(obj, version, strict=True)
    assert builtin


def test_the_base_applies_on_a_plain_cluster() -> None:
    # no custom resource kinds (no Prometheus Operator, no cert-manager), and no RuntimeClass
    # that a cluster may not have
    assert {o["kind"] for o in RENDERED} & CRD_KINDS == set()
    assert "runtimeClassName" not in AGENT["spec"]["template"]["spec"]


def test_the_nvidia_runtime_component_sets_the_runtime_class() -> None:
    agent = one("DaemonSet", "gpuwarden-agent", list(render_with("nvidia-runtime")))
    assert agent["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


def test_the_cert_manager_component_makes_exactly_the_secrets_the_base_needs() -> None:
    certificates = objects("Certificate", list(render_with("cert-manager")))
    assert {c["spec"]["secretName"] for c in certificates} == OPERATOR_SECRETS
    [ca] = [c for c in certificates if c["spec"].get("isCA")]
    assert ca["spec"]["privateKey"]["algorithm"] == "ECDSA"  # the coordinator signs with EC


def test_the_example_overlay_points_the_images_at_another_registry() -> None:
    rendered = list(render(DEPLOY / "overlays" / "example"))
    for kind, name, c in (("DaemonSet", "gpuwarden-agent", "agent"),
                          ("StatefulSet", "gpuwarden-coordinator", "coordinator")):
        image = container(one(kind, name, rendered), c)["image"]
        assert image.startswith("registry.example.com/gpuwarden/"), image


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
    signer = {(verb, resource, "certificates.k8s.io") for verb, resource in SIGNER_RBAC}
    expected = _expected(exclude={"leases"}) | signer
    assert granted(one("ClusterRole", "gpuwarden-coordinator")) == expected


def test_the_coordinator_signs_and_patches_only_what_is_its_own() -> None:
    rules = one("ClusterRole", "gpuwarden-coordinator")["rules"]
    named = {r["resources"][0]: r["resourceNames"] for r in rules if "resourceNames" in r}
    assert named == {"signers": [SIGNER_NAME], "mutatingwebhookconfigurations": ["gpuwarden"]}
    webhook = one("MutatingWebhookConfiguration", "gpuwarden")["metadata"]["name"]
    assert coordinator_settings().webhook_configuration == webhook


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
    ("binding_kind", "role_kind", "name", "workload"),
    [
        ("ClusterRoleBinding", "ClusterRole", "gpuwarden-coordinator", "coordinator"),
        ("RoleBinding", "Role", "gpuwarden-coordinator-leader-election", "coordinator"),
        ("ClusterRoleBinding", "ClusterRole", "gpuwarden-agent", "agent"),
    ],
)
def test_roles_are_bound_to_their_workloads_service_account(
    binding_kind: str, role_kind: str, name: str, workload: str
) -> None:
    binding = one(binding_kind, name)
    pods = {"coordinator": COORDINATOR, "agent": AGENT}[workload]
    account = pods["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role_kind,
        "name": name,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert one("ServiceAccount", account)


def test_the_broker_has_no_token_and_the_agent_may_only_ask_for_its_certificate() -> None:
    assert BROKER["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert granted(one("ClusterRole", "gpuwarden-agent")) == {
        ("create", "certificatesigningrequests", "certificates.k8s.io"),
        ("get", "certificatesigningrequests", "certificates.k8s.io"),
    }
    # the signer trusts exactly the agents' ServiceAccount
    account = AGENT["spec"]["template"]["spec"]["serviceAccountName"]
    assert coordinator_settings().agent_service_account == (NAMESPACE, account)


# --- the agent DaemonSet ------------------------------------------------------------------


def test_agent_runs_only_on_gpu_nodes() -> None:
    spec = AGENT["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


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
    assert settings.http is not None


def test_agent_gets_its_certificate_from_the_csr_api_and_keeps_it_on_the_host() -> None:
    c = container(AGENT, "agent")
    settings = parse_agent_settings([], literal_env(c, {"NODE_NAME": "gpu-node-7"}))
    state_mount = Path(mount_of(AGENT, c, "state"))
    assert settings.tls_bootstrap == "in-cluster"
    assert settings.broker.tls and settings.broker.tls_cert == settings.broker.tls_key
    for path in (settings.broker.tls_cert, settings.broker.tls_ca):
        assert path is not None and Path(path).is_relative_to(state_mount)
    # nothing per node to provision: no hostPath but the agent's own state and the kernel log
    host_paths = {v["hostPath"]["path"] for v in AGENT["spec"]["template"]["spec"]["volumes"]
                  if "hostPath" in v}
    assert host_paths == {"/var/lib/gpuwarden", "/dev/kmsg"}


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
    [port] = [p for p in c["ports"] if p["name"] == "http"]
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


# --- the admission webhook ---------------------------------------------------------------

WEBHOOK_CONFIGURATION = one("MutatingWebhookConfiguration", "gpuwarden")
[POD_WEBHOOK] = WEBHOOK_CONFIGURATION["webhooks"]


def test_the_webhook_calls_the_coordinators_webhook_listener() -> None:
    service_ref = POD_WEBHOOK["clientConfig"]["service"]
    service = one("Service", service_ref["name"])
    [port] = [p for p in service["spec"]["ports"] if p["port"] == service_ref["port"]]
    [container_port] = [p for p in container(COORDINATOR, "coordinator")["ports"]
                        if p["name"] == port["targetPort"]]
    settings = coordinator_settings()
    assert settings.webhook is not None
    assert container_port["containerPort"] == settings.webhook.port
    assert service_ref["path"] == WEBHOOK_PATH
    # the serving certificate names what the API server dials
    assert f"{service_ref['name']}.{service_ref['namespace']}.svc" in settings.webhook_names


def test_the_webhook_fails_closed_on_gpu_pods_only_and_honours_the_opt_out() -> None:
    assert POD_WEBHOOK["failurePolicy"] == "Fail"
    assert POD_WEBHOOK["sideEffects"] == "None"
    assert POD_WEBHOOK["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                                     "operations": ["CREATE"], "resources": ["pods"],
                                     "scope": "Namespaced"}]
    [condition] = POD_WEBHOOK["matchConditions"]
    assert f"'{GPU_RESOURCE}'" in condition["expression"]
    [opt_out] = POD_WEBHOOK["objectSelector"]["matchExpressions"]
    assert (opt_out["key"], opt_out["operator"], opt_out["values"]) == (
        "gpuwarden.io/admission", "NotIn", ["skip"])
    [excluded] = POD_WEBHOOK["namespaceSelector"]["matchExpressions"]
    assert {"kube-system", NAMESPACE} <= set(excluded["values"])


def test_the_webhook_ships_without_a_ca_bundle_the_coordinator_sets_it() -> None:
    assert "caBundle" not in POD_WEBHOOK["clientConfig"]


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


@pytest.mark.parametrize(
    "monitor", objects("ServiceMonitor", MONITORED), ids=lambda m: m["metadata"]["name"]
)
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
    for group in one("PrometheusRule", "gpuwarden", MONITORED)["spec"]["groups"]
    for rule in group["rules"]
]


def test_prometheus_rules_have_the_operators_shape() -> None:
    rule_object = one("PrometheusRule", "gpuwarden", MONITORED)
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
        "GpuwardenAgentCertificateExpiring",
        "GpuwardenNodeCertificatesDenied",
        "GpuwardenNodeCaExpiring",
    }


DASHBOARD_CONFIGMAP = one("ConfigMap", "gpuwarden-grafana-dashboard", MONITORED)
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
    suffixes the client adds to it, whether a metric object or a family a collector yields
    at scrape time."""
    suffixes = {
        "Counter": ("_total", "_created"),
        "Gauge": ("",),
        "Histogram": ("_bucket", "_sum", "_count", "_created"),
        "Summary": ("", "_sum", "_count", "_created"),
        "CounterMetricFamily": ("_total",),
        "GaugeMetricFamily": ("",),
        "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
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
                    counter = kind in {"Counter", "CounterMetricFamily"}
                    base = first.value.removesuffix("_total") if counter else first.value
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


def test_agent_shares_the_hosts_pid_namespace_to_attribute_gpu_processes() -> None:
    # NVML's pids are the host's: /proc/<pid>/cgroup names their pods only in its namespace
    c = container(AGENT, "agent")
    settings = parse_agent_settings([], literal_env(c, {"NODE_NAME": "gpu-node-7"}))
    assert AGENT["spec"]["template"]["spec"]["hostPID"] is True
    assert settings.proc_root == Path("/proc")
