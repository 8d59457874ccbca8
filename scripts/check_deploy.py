#!/usr/bin/env python3
"""Checks the Helm chart (deploy/helm/kvstore) and the manifests rendered from it.

Run by scripts/check-deploy.sh (`make deploy-check`), which installs what this needs (pinned)
and passes the checkov to use. Offline: Helm's engine is embedded (helm-python-sdk), the
Kubernetes schemas ship with kubernetes-validate, checkov runs with --skip-download.

Steps, each printed:
  1. lint the chart (strict) with its default values and with every file in ci/;
  2. the values schema accepts those files and refuses bad values; the templates refuse
     combinations that cannot work (fewer nodes than replicas, a quorum above N);
  3. render the chart: default values, ci/values-5-nodes-3-zones.yaml, a TLS variant, a
     variant without API access, and deploy/k8s/values.yaml (release kvstore, namespace
     default): no duplicate YAML keys, every object valid for Kubernetes 1.27 (the chart's
     minimum) and 1.37 (the newest schemas shipped), strict (unknown fields fail);
  4. assert what the chart promises (OrderedReady, the volume retention policy, the preStop
     decommission, probes, PDB, HPA behaviour, the NetworkPolicy on the peer port, seeds and
     advertised addresses, non-root read-only containers, tokens mounted only where needed,
     every KV_ variable a real flag);
  5. run the init and preStop scripts under stub curl and kvctl: a scale-down leaves, every
     other stop does not;
  6. deploy/k8s/kvstore.yaml equals a fresh rendering (--write regenerates it);
  7. checkov over every rendering: no failed check except those skipped with a reason.

Usage: scripts/check_deploy.py --checkov PATH [--write]
"""

import argparse
import base64
import difflib
import glob
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

from importlib.metadata import version as helm_version

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "deploy", "helm", "kvstore")
CI_VALUES = sorted(glob.glob(os.path.join(CHART, "ci", "*.yaml")))
K8S_VALUES = os.path.join(ROOT, "deploy", "k8s", "values.yaml")
K8S_MANIFEST = os.path.join(ROOT, "deploy", "k8s", "kvstore.yaml")
RELEASE = "kvstore"
# The chart's minimum (Chart.yaml kubeVersion) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.27.0", "1.37.0"]
# Kinds kubernetes-validate has no schema for (CRDs): checked by assertions below instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Files of deploy/ the chart renders from its own copies (Helm reads only the chart's files).
COPIES = [(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml"), os.path.join(CHART, "files", "alerts.yml")),
          (os.path.join(ROOT, "deploy", "grafana", "kvstore.json"), os.path.join(CHART, "files", "kvstore.json"))]

# checkov checks that do not apply, each with the reason. Everything else must pass.
CHECKOV_SKIPS = {
    # IfNotPresent on a pinned release tag (or image.digest): a restarting storage node must
    # not depend on the registry being reachable; Always would make every restart pull.
    "CKV_K8S_15": "Image Pull Policy should be Always",
    # The tag is pinned to the chart's appVersion (and the schema refuses `latest`); a digest
    # is one value away (image.digest), but a chart cannot know the digest of a future build.
    "CKV_K8S_43": "Image should use digest",
}
# Only for the OpenShift rendering: its values leave the UID out on purpose.
CHECKOV_SKIPS_OPENSHIFT = {
    # OpenShift's restricted SCC assigns each namespace's pods a UID from a high range of its own.
    "CKV_K8S_40": "Containers should run as a high UID to avoid host conflict",
}
# Only for deploy/k8s/kvstore.yaml: it is rendered for the `default` namespace on purpose
# (what `kubectl apply -f` without -n uses; the addresses inside name the namespace).
CHECKOV_SKIPS_K8S = {"CKV_K8S_21": "The default namespace should not be used"}

# Helm's install order (pkg/release/util/kind_sorter.go), so the file applies in order.
KIND_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService",
]


def step(text):
    print(f"check-deploy: {text}", flush=True)


def fail(text):
    print(f"check-deploy: FAILED: {text}", file=sys.stderr, flush=True)
    sys.exit(1)


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently; the API
    server's strict decoding refuses them)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_values(path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=UniqueKeyLoader) or {}


# ---------------------------------------------------------------------------------------
# 1-2. Lint and values


def lint(values, label):
    report = helm.lint(CHART, values, strict=True, namespace="kvstore", kube_version="v1.27.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    if problems:
        fail(f"helm lint ({label}): {problems}")
    step(f"lint ({label}): ok")


def expect_refused(chart, values, what, needle):
    """`values` must be refused, by the schema or a template's `fail`, saying `needle`."""
    try:
        chart.validate_schema(values)
        chart.render(values, name=RELEASE, namespace="kvstore")
    except helm.HelmError as e:
        if needle not in str(e):
            fail(f"{what}: refused, but the message lacks {needle!r}: {e}")
        return
    fail(f"{what}: accepted")


def check_values(chart):
    for path in CI_VALUES + [K8S_VALUES]:
        chart.validate_schema(load_values(path))
    refused = [
        ({"image": {"tag": "latest"}}, "image.tag latest", "tag"),
        ({"node": {"replicas": 0}}, "node.replicas 0", "replicas"),
        ({"node": {"replcas": 3}}, "a misspelt key", "replcas"),
        ({"node": {"topologySpread": {"zone": "Sometimes"}}}, "an unknown spread mode", "zone"),
        ({"node": {"replicas": 2}}, "2 nodes for N = 3", "must be at least replication.factor"),
        ({"replication": {"replicas": 3}}, "the old name of the replication factor", "renamed replication.factor"),
        ({"clusterSecret": {"generate": False}}, "no cluster secret at all", "clusterSecret: set existingSecret"),
        ({"clientTokens": {"generate": False}}, "tokens on without tokens", "clientTokens: set existingSecret"),
        ({"replication": {"writeQuorum": 4}}, "W above N", "must not exceed"),
        ({"tls": {"enabled": True}}, "TLS without a Secret", "tls.existingSecret"),
        ({"node": {"autoscaling": {"enabled": True, "minReplicas": 2}}}, "an HPA below N",
         "minReplicas"),
    ]
    for values, what, needle in refused:
        expect_refused(chart, values, what, needle)
    step(f"values: the schema accepts {len(CI_VALUES) + 1} files, refuses {len(refused)} bad sets")


# ---------------------------------------------------------------------------------------
# 3. Render and validate


def kind_rank(kind):
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def render(chart, values, namespace, upgrade=False):
    """Renders the chart as `helm template` would (`--is-upgrade` with upgrade); returns (text,
    objects) in install order."""
    manifests = chart.render(values, name=RELEASE, namespace=namespace, is_install=not upgrade, is_upgrade=upgrade)
    docs = []
    for source, text in manifests.items():
        if source.endswith("NOTES.txt"):
            continue
        for doc in re.split(r"(?m)^---\s*$", text):
            try:
                obj = yaml.load(doc, Loader=UniqueKeyLoader)
            except yaml.YAMLError as e:
                fail(f"{source} does not parse: {e}")
            if not obj:
                continue
            body = "\n".join(line.rstrip() for line in doc.strip("\n").splitlines())
            docs.append((kind_rank(obj["kind"]), obj["kind"], obj["metadata"]["name"], source, body, obj))
    docs.sort(key=lambda d: d[:3])
    text = "".join(f"---\n# Source: {d[3]}\n{d[4]}\n" for d in docs)
    return text, [d[5] for d in docs]


def validate(objects, label):
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(f"{label}: {obj['kind']}/{obj['metadata']['name']} is not valid for "
                     f"Kubernetes {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(f"{label}: {e.message}")
    crds = sorted({o["kind"] for o in objects if o["kind"] in CRD_KINDS})
    skipped = f" ({', '.join(crds)}: a CRD, no schema shipped; asserted below)" if crds else ""
    step(f"validate ({label}): {len(objects)} objects valid for Kubernetes "
         f"{' and '.join(KUBE_VERSIONS)}, strict{skipped}")


# ---------------------------------------------------------------------------------------
# 4. Properties


def one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(found) != 1:
        fail(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def flags_in_sources():
    """Every KV_ variable a binary reads (clap `env = "KV_..."`), from the sources."""
    names = set()
    for path in glob.glob(os.path.join(ROOT, "crates", "*", "src", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            names.update(re.findall(r'env = "(KV_[A-Z0-9_]+)"', f.read()))
    return names


def check_pod(label, owner, values, spread=True):
    spec = owner["spec"]["template"]["spec"]
    name = owner["metadata"]["name"]
    psc = spec.get("securityContext", {})
    # OpenShift: the UID, GID and fsGroup are the SCC's (set to null in the values).
    openshift = values.get("podSecurityContext", {}).get("runAsUser", 10001) is None
    if not (psc.get("runAsNonRoot") and (openshift or (psc.get("runAsUser", 0) >= 10000 and psc.get("fsGroup")))
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
        fail(f"{label}: {name}: pod securityContext is not non-root with fsGroup and RuntimeDefault")
    if openshift and {"runAsUser", "runAsGroup", "fsGroup"} & (set(psc) | {
            k for c in spec["containers"] for k in c.get("securityContext", {})}):
        fail(f"{label}: {name}: a UID, GID or fsGroup is set although the values removed them (OpenShift)")
    if spec.get("automountServiceAccountToken") is not False:
        fail(f"{label}: {name}: the service account token must not be mounted automatically")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")
                and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            fail(f"{label}: {name}/{c['name']}: container must be non-root, read-only, no escalation, drop ALL")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part, {})):
                fail(f"{label}: {name}/{c['name']}: needs cpu and memory {part}")
        if c["image"].endswith(":latest") or (":" not in c["image"] and "@" not in c["image"]):
            fail(f"{label}: {name}/{c['name']}: image must be pinned: {c['image']}")
        if "@" not in c["image"] and c["image"].rsplit(":", 1)[1] != expected_tag(values):
            fail(f"{label}: {name}/{c['name']}: image {c['image']}: the tag must be image.tag, else appVersion")
    keys = {t["topologyKey"] for t in spec.get("topologySpreadConstraints", [])}
    if spread and keys != {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}:
        fail(f"{label}: {name}: must spread over zones and hosts, has {keys}")
    # Credentials are files; the API token only where a script uses it.
    for c in spec["containers"] + spec.get("initContainers", []):
        for e in c.get("env", []):
            if "secretKeyRef" in e.get("valueFrom", {}):
                fail(f"{label}: {name}/{c['name']}: secret {e['name']} in the environment")
    return spec


def expected_tag(values):
    """The image tag a rendering must use: image.tag, else the chart's appVersion."""
    with open(os.path.join(CHART, "Chart.yaml")) as f:
        app_version = str(yaml.safe_load(f)["appVersion"])
    return values.get("image", {}).get("tag") or app_version


README = os.path.join(CHART, "README.md")
README_BEGIN = "<!-- values: generated from values.yaml by scripts/check-deploy.sh --write -->"
README_END = "<!-- end of values -->"


def values_table():
    """Every value of values.yaml (leaves: scalars, lists, flow maps, empty maps) with its
    default and the comment above it, as Markdown; a map's comment is a row of its own."""
    rows, stack, comment = [], [], []
    with open(os.path.join(CHART, "values.yaml")) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"^( *)([A-Za-z0-9_]+):(.*)$", line)
        if not m:
            comment = []
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).split(" #")[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        own = " ".join(comment)
        comment = []
        nxt = next((x for x in lines[i + 1:] if x.strip() and not x.strip().startswith("#")), "")
        nested = not rest and len(nxt) - len(nxt.lstrip()) > indent
        if nested:
            stack.append((indent, key))
            if own:
                rows.append((path, "", own))
        else:
            default = rest if rest else "{}"
            rows.append((path, default, own))
    out = ["| value | default | meaning |", "|---|---|---|"]
    for path, default, own in rows:
        text = own.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        shown = default.replace("|", "\\|")
        out.append(f"| `{path}` | {'`' + shown + '`' if shown else ''} | {text} |")
    return "\n".join(out) + "\n"


def check_readme(write):
    """The chart README's values table is values.yaml's, so the two cannot drift."""
    text = open(README).read()
    if README_BEGIN not in text or README_END not in text:
        fail(f"{os.path.relpath(README, ROOT)} lacks the values markers")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    fresh = f"{head}{README_BEGIN}\n{values_table()}{README_END}{tail}"
    if write:
        with open(README, "w") as f:
            f.write(fresh)
        step(f"wrote the values table of {os.path.relpath(README, ROOT)}")
    elif fresh != text:
        fail(f"{os.path.relpath(README, ROOT)}: its values table differs from values.yaml; "
             "regenerate it with scripts/check-deploy.sh --write")
    check_links(README)
    step(f"{os.path.relpath(README, ROOT)}: every value of values.yaml, links ok")


def check_links(path):
    """Every relative link of a Markdown file names a file that exists."""
    text = open(path).read()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        if not os.path.exists(os.path.join(os.path.dirname(path), target)):
            fail(f"{os.path.relpath(path, ROOT)}: link to {target}, which does not exist")


def check_properties(label, objects, values, namespace):
    n = values.get("replication", {}).get("factor", 3)
    node_values = values.get("node", {})
    replicas = node_values.get("replicas", 3)
    decommission = node_values.get("decommissionOnScaleDown", True)
    from_label = values.get("zone", {}).get("fromNodeLabel", False)
    sts = one(objects, "StatefulSet")
    spec = sts["spec"]
    headless = one(objects, "Service", spec["serviceName"])
    if headless["spec"].get("clusterIP") != "None" or not headless["spec"].get("publishNotReadyAddresses"):
        fail(f"{label}: {headless['metadata']['name']} must be headless and publish not-ready addresses")
    if spec["podManagementPolicy"] != "OrderedReady":
        fail(f"{label}: podManagementPolicy must be OrderedReady (one membership change at a time)")
    # No scaling (not even to zero) and no uninstall deletes a data volume.
    if spec["persistentVolumeClaimRetentionPolicy"] != {"whenScaled": "Retain", "whenDeleted": "Retain"}:
        fail(f"{label}: PVC retention must be whenScaled Retain, whenDeleted Retain (no scaling deletes data)")
    pod = check_pod(label, sts, values)
    node = next(c for c in pod["containers"] if c["name"] == "kvnode")
    env = env_of(node)
    rejoin = "true" if node_values.get("rejoinAfterLeave", True) else "false"
    if env.get("REJOIN_AFTER_LEAVE") != rejoin:
        fail(f"{label}: REJOIN_AFTER_LEAVE must be {rejoin} (node.rejoinAfterLeave)")
    if env["POD_NAME"] != {"fieldRef": {"fieldPath": "metadata.name"}} or env["KV_NODE_ID"] != "$(POD_NAME)":
        fail(f"{label}: KV_NODE_ID must be the pod name (downward API)")
    domain = f"{headless['metadata']['name']}.{namespace}.svc.{values.get('clusterDomain', 'cluster.local')}"
    if env["KV_ADVERTISE"] != f"$(POD_NAME).{domain}:7100":
        fail(f"{label}: KV_ADVERTISE is {env['KV_ADVERTISE']}")
    for var, port in (("KV_LISTEN", 7000), ("KV_PEER_LISTEN", 7100), ("KV_ADMIN_LISTEN", 7200)):
        if env[var] != f"0.0.0.0:{port}":
            fail(f"{label}: {var} must be 0.0.0.0:{port}")
    seeds = env["KV_SEEDS"].split(",")
    want = [f"{sts['metadata']['name']}-{i}.{domain}:7100" for i in range(min(3, replicas))]
    if seeds != want:
        fail(f"{label}: KV_SEEDS {seeds}, expected {want}")
    mounts = {m["mountPath"]: m["name"] for m in node["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
    if mounts.get("/data") not in claims or env["KV_DATA_DIR"] != "/data":
        fail(f"{label}: /data must be the volume claim template")
    probes = {p: node.get(p, {}).get("httpGet", {}) for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    if (probes["readinessProbe"].get("path"), probes["livenessProbe"].get("path"), probes["startupProbe"].get("path")) \
            != ("/health/ready", "/health/live", "/health/live") \
            or any(p.get("port") != "admin" for p in probes.values()):
        fail(f"{label}: probes must be /health/ready and /health/live on the admin port: {probes}")
    prestop = node.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if decommission:
        if prestop != ["/bin/sh", "/etc/kvstore/scripts/prestop.sh"]:
            fail(f"{label}: the preStop hook must run prestop.sh, has {prestop}")
        if pod["terminationGracePeriodSeconds"] < 300:
            fail(f"{label}: terminationGracePeriodSeconds too short for a decommission")
        role = one(objects, "Role", f"{sts['metadata']['name']}-scale-reader")
        if role["rules"] != [{"apiGroups": ["apps"], "resources": ["statefulsets/scale"],
                              "resourceNames": [sts["metadata"]["name"]], "verbs": ["get"]}]:
            fail(f"{label}: the preStop Role must allow only get on this StatefulSet's scale")
        if "/var/run/secrets/kubernetes.io/serviceaccount" not in mounts:
            fail(f"{label}: the preStop hook needs the API token")
    elif prestop or "/var/run/secrets/kubernetes.io/serviceaccount" in mounts:
        fail(f"{label}: no preStop hook and no API token without decommissionOnScaleDown")
    if from_label != bool(pod.get("initContainers")):
        fail(f"{label}: the zone init container must run exactly when zone.fromNodeLabel")
    # Namespace-scoped RBAC unless the zone must be read from the Kubernetes node.
    cluster_scoped = sorted(o["kind"] for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding"))
    if cluster_scoped != (["ClusterRole", "ClusterRoleBinding"] if from_label else []):
        fail(f"{label}: cluster-scoped RBAC {cluster_scoped} with zone.fromNodeLabel {from_label}")

    pdb = one(objects, "PodDisruptionBudget", sts["metadata"]["name"])
    if pdb["spec"].get("maxUnavailable") != 1 or pdb["spec"]["selector"] != spec["selector"]:
        fail(f"{label}: the nodes' PDB must be maxUnavailable 1 over the StatefulSet's pods")

    hpas = {h["spec"]["scaleTargetRef"]["kind"]: h for h in objects if h["kind"] == "HorizontalPodAutoscaler"}
    if node_values.get("autoscaling", {}).get("enabled", False):
        behavior = hpas["StatefulSet"]["spec"]["behavior"]
        down, up = behavior["scaleDown"], behavior["scaleUp"]
        if down["stabilizationWindowSeconds"] < 300:
            fail(f"{label}: the nodes' HPA must wait at least 300 s before scaling down")
        for way, b in (("down", down), ("up", up)):
            if [(p["type"], p["value"]) for p in b["policies"]] != [("Pods", 1)]:
                fail(f"{label}: the nodes' HPA must scale {way} one pod per period")
        if down["policies"][0]["periodSeconds"] < 300:
            fail(f"{label}: the nodes' HPA scale-down period is shorter than a decommission")
        if hpas["StatefulSet"]["spec"]["minReplicas"] < n:
            fail(f"{label}: the nodes' HPA may go below N")
    elif "StatefulSet" in hpas:
        fail(f"{label}: a node HPA although node.autoscaling is off")

    # The gateway joins the same cluster.
    deploy = one(objects, "Deployment")
    gpod = check_pod(label, deploy, values)
    gw = next(c for c in gpod["containers"] if c["name"] == "kvgateway")
    genv = env_of(gw)
    for var in ("KV_SEEDS", "KV_REPLICAS", "KV_EXPECT_NODES", "KV_CLUSTER_SECRET_FILE"):
        if genv.get(var) != env.get(var):
            fail(f"{label}: gateway and nodes disagree on {var}")
    if any(m["mountPath"].startswith("/var/run/secrets/kubernetes.io") for m in gw["volumeMounts"]):
        fail(f"{label}: the gateway container needs no API token")
    # A rolling restart: a stopping gateway serves on while it leaves the Service's endpoints.
    wait = values.get("gateway", {}).get("preStopSeconds", 5)
    gw_prestop = gw.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if (gw_prestop != ["sleep", str(wait)]) if wait else gw_prestop:
        fail(f"{label}: the gateway's preStop must wait {wait} s, is {gw_prestop}")
    if wait and wait >= gpod["terminationGracePeriodSeconds"]:
        fail(f"{label}: the gateway's preStop wait leaves no time to drain")

    # Every KV_ variable is a real flag of a binary.
    known = flags_in_sources()
    for c in (node, gw):
        unknown = sorted(v for v in env_of(c) if v.startswith("KV_") and v not in known)
        if unknown:
            fail(f"{label}: {c['name']} sets variables no binary reads: {unknown}")
        admin_tokens = bool(values.get("adminTokens", {}).get("existingSecret"))
        if ("KV_ADMIN_TOKENS_FILE" in env_of(c)) != admin_tokens:
            fail(f"{label}: {c['name']} must read admin tokens exactly when adminTokens.existingSecret is set")

    # Credentials: no rendering holds a secret (a GitOps renderer would make a new one at every
    # sync); every Secret a pod mounts is named in the values or made once by the hook Job.
    if any(o["kind"] == "Secret" for o in objects):
        fail(f"{label}: a Secret is rendered: `helm template` would make a new one at every rendering")
    external = {values.get(k, {}).get("existingSecret") for k in ("clusterSecret", "clientTokens", "adminTokens", "tls")} - {None, ""}
    jobs = [o for o in objects if o["kind"] == "Job"]
    made = set()
    for job in jobs:
        hooks = job["metadata"].get("annotations", {})
        if hooks.get("helm.sh/hook") != "pre-install,pre-upgrade" \
                or "before-hook-creation" not in hooks.get("helm.sh/hook-delete-policy", ""):
            fail(f"{label}: Job {job['metadata']['name']} must be a pre-install,pre-upgrade hook: {hooks}")
        args = job["spec"]["template"]["spec"]["containers"][0]["command"][4:]
        made |= {args[i] for i in range(0, len(args), 3)}
        check_pod(label, job, values, spread=False)
    for p in (pod, gpod):
        for vol in p["volumes"]:
            for src in vol.get("projected", {}).get("sources", []):
                ref = src.get("secret", {}).get("name")
                if ref and ref not in made and ref not in external:
                    fail(f"{label}: volume {vol['name']} names Secret {ref}, which is neither made by the hook Job nor given")

    # Replicas are always rendered (never null on an upgrade with an HPA: helm/helm#12650).
    for owner in (sts, deploy):
        if not isinstance(owner["spec"].get("replicas"), int) or owner["spec"]["replicas"] < 1:
            fail(f"{label}: {owner['kind']} {owner['metadata']['name']} replicas {owner['spec'].get('replicas')!r}")

    # podLabels on every pod; extra volumes where asked.
    for owner in [sts, deploy] + jobs:
        pod_labels = owner["spec"]["template"]["metadata"]["labels"]
        missing = {k: v for k, v in values.get("podLabels", {}).items() if pod_labels.get(k) != v}
        if missing:
            fail(f"{label}: {owner['metadata']['name']}: pod labels lack {missing}")
    for owner, component, container in ((sts, "node", node), (deploy, "gateway", gw)):
        extra = values.get(component, {})
        names = {v["name"] for v in owner["spec"]["template"]["spec"]["volumes"]}
        mounts_of = {m["name"] for m in container["volumeMounts"]}
        if not {v["name"] for v in extra.get("extraVolumes", [])} <= names \
                or not {m["name"] for m in extra.get("extraVolumeMounts", [])} <= mounts_of:
            fail(f"{label}: {component}.extraVolumes or extraVolumeMounts not rendered")

    # Opt-in monitoring objects, rendered from the files in deploy/.
    rules = [o for o in objects if o["kind"] == "PrometheusRule"]
    if bool(rules) != values.get("prometheusRule", {}).get("enabled", False):
        fail(f"{label}: a PrometheusRule exactly when prometheusRule.enabled")
    for rule in rules:
        with open(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")) as f:
            if rule["spec"] != yaml.safe_load(f):
                fail(f"{label}: the PrometheusRule's groups differ from deploy/prometheus/alerts.yml")
    boards = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    if bool(boards) != values.get("grafanaDashboard", {}).get("enabled", False):
        fail(f"{label}: a dashboard ConfigMap exactly when grafanaDashboard.enabled")
    for board in boards:
        with open(os.path.join(ROOT, "deploy", "grafana", "kvstore.json")) as f:
            if json.loads(board["data"]["kvstore.json"]) != json.load(f):
                fail(f"{label}: the dashboard ConfigMap differs from deploy/grafana/kvstore.json")
        wanted = values.get("grafanaDashboard", {}).get("labels", {"grafana_dashboard": "1"})
        if any(board["metadata"]["labels"].get(k) != v for k, v in wanted.items()):
            fail(f"{label}: the dashboard ConfigMap lacks the sidecar's labels {wanted}")

    # Only nodes and gateways reach the peer port; Prometheus's namespace reaches the admin ports
    # (by default `monitoring`), the client namespaces the client ports.
    if values.get("networkPolicy", {}).get("enabled", True):
        np_values = values.get("networkPolicy", {})
        for job in jobs:
            policy = one(objects, "NetworkPolicy", job["metadata"]["name"])
            job_labels = job["spec"]["template"]["metadata"]["labels"]
            selected = all(job_labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
            if policy["spec"].get("ingress") != [] or not selected:
                fail(f"{label}: the hook Job's pods must be selected by a NetworkPolicy admitting nothing")
        for policy in (o for o in objects if o["kind"] == "NetworkPolicy" and o["spec"].get("ingress")):
            for ports, key, default in (({7200, 8081}, "scrapeNamespaces", ["monitoring"]),
                                        ({7000, 8080}, "clientNamespaces", [])):
                rules = [r for r in policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} & ports]
                admitted = {f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                            for r in rules for f in r["from"]}
                if not set(np_values.get(key, default)) <= admitted:
                    fail(f"{label}: {policy['metadata']['name']}: ports {sorted(ports)} must admit the namespaces "
                         f"{np_values.get(key, default)} ({key}), admit {sorted(a for a in admitted if a)}")
        policy = one(objects, "NetworkPolicy", sts["metadata"]["name"])
        if policy["spec"]["podSelector"]["matchLabels"] != spec["selector"]["matchLabels"]:
            fail(f"{label}: the nodes' NetworkPolicy must select the node pods")
        peer = [r for r in policy["spec"]["ingress"] if any(p["port"] == 7100 for p in r["ports"])]
        if len(peer) != 1:
            fail(f"{label}: the nodes' NetworkPolicy needs one rule for port 7100")
        allowed = [f.get("podSelector", {}).get("matchLabels") for f in peer[0]["from"]]
        release = {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/name": "kvstore"}
        if allowed != [{**release, "app.kubernetes.io/component": c} for c in ("node", "gateway")] \
                or any(set(f) != {"podSelector"} for f in peer[0]["from"]):
            fail(f"{label}: port 7100 must admit only this release's nodes and gateways: {peer[0]['from']}")

    # Prometheus: the ServiceMonitor selects both Services by their admin port.
    if values.get("serviceMonitor", {}).get("enabled", False):
        sm = one(objects, "ServiceMonitor")
        if sm["apiVersion"] != "monitoring.coreos.com/v1":
            fail(f"{label}: ServiceMonitor apiVersion {sm['apiVersion']}")
        if [(e["port"], e["path"]) for e in sm["spec"]["endpoints"]] != [("admin", "/metrics")]:
            fail(f"{label}: the ServiceMonitor must scrape /metrics on the admin port")
        jobs = {}
        for svc in (o for o in objects if o["kind"] == "Service"):
            labels = svc["metadata"]["labels"]
            if all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()) \
                    and sm["spec"]["jobLabel"] in labels:
                if "admin" not in [p["name"] for p in svc["spec"]["ports"]]:
                    fail(f"{label}: Service {svc['metadata']['name']} has no admin port to scrape")
                jobs[labels[sm["spec"]["jobLabel"]]] = svc["metadata"]["name"]
        if set(jobs) != {"kvnode", "kvgateway"}:
            fail(f"{label}: the ServiceMonitor must find jobs kvnode and kvgateway, finds {jobs}")
    step(f"properties ({label}): ok")


# ---------------------------------------------------------------------------------------
# 5. The scripts, under stubs

STUB_CURL = r"""#!/bin/sh
# Stub curl: the Kubernetes API answers $API_BODY (exit $API_RC); /health/live answers
# $LIVE_UP times, then the process is gone.
for a in "$@"; do url=$a; done
echo "curl $url" >>"$STUB_DIR/calls"
case $url in
  */health/live)
    n=$(cat "$STUB_DIR/live.count" 2>/dev/null || echo 0); echo $((n + 1)) >"$STUB_DIR/live.count"
    [ "$n" -lt "${LIVE_UP:-0}" ] && exit 0; exit 7 ;;
  *) [ "${API_RC:-0}" -eq 0 ] && printf '%s' "$API_BODY"; exit "${API_RC:-0}" ;;
esac
"""
STUB_KVCTL = r"""#!/bin/sh
# Stub kvctl: exits with the next code of $KVCTL_RCS (then 0).
echo "kvctl $*" >>"$STUB_DIR/calls"
n=$(cat "$STUB_DIR/kvctl.count" 2>/dev/null || echo 0); echo $((n + 1)) >"$STUB_DIR/kvctl.count"
rc=$(echo "${KVCTL_RCS:-0}" | cut -d, -f$((n + 1))); exit "${rc:-0}"
"""


def run_script(script, env_extra, stub_dir):
    for f in ("calls", "live.count", "kvctl.count"):
        if os.path.exists(os.path.join(stub_dir, f)):
            os.remove(os.path.join(stub_dir, f))
    env = {
        "PATH": f"{stub_dir}:/usr/bin:/bin",
        "STUB_DIR": stub_dir,
        "SERVICE_ACCOUNT_DIR": stub_dir,
        "PRESTOP_LOG": os.path.join(stub_dir, "log"),
        "ZONE_FILE": os.path.join(stub_dir, "zone"),
        "KUBERNETES_API": "https://api.test",
        **env_extra,
    }
    result = subprocess.run(["sh", os.path.join(CHART, "files", script)], env=env,
                            capture_output=True, text=True, timeout=30)
    calls_path = os.path.join(stub_dir, "calls")
    calls = open(calls_path).read().splitlines() if os.path.exists(calls_path) else []
    return result, calls


class FakeApi(http.server.BaseHTTPRequestHandler):
    """The Secrets part of a Kubernetes API: GET one by name, POST one (409 if it exists)."""
    secrets = {}
    fail_reads = False
    calls = []

    def log_message(self, *args):
        pass

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        FakeApi.calls.append(("GET", self.path, self.headers.get("Authorization")))
        name = self.path.rsplit("/", 1)[-1]
        if FakeApi.fail_reads:
            self.answer(500, {"kind": "Status", "code": 500})
        elif name in FakeApi.secrets:
            self.answer(200, FakeApi.secrets[name])
        else:
            self.answer(404, {"kind": "Status", "code": 404})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeApi.calls.append(("POST", self.path, self.headers.get("Authorization")))
        name = body["metadata"]["name"]
        if name in FakeApi.secrets:
            self.answer(409, {"kind": "Status", "code": 409})
        else:
            FakeApi.secrets[name] = body
            self.answer(201, body)


def check_secrets_script(stub_dir):
    """files/secrets.sh as the hook Job runs it, with the real curl against a fake API."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = open(os.path.join(CHART, "files", "secrets.sh")).read()
    args = ["kv-cluster-secret", "cluster-secret", "cluster", "kv-client-tokens", "client-tokens", "tokens"]

    def run():
        FakeApi.calls = []
        env = {"PATH": "/usr/bin:/bin", "POD_NAMESPACE": "kv", "SERVICE_ACCOUNT_DIR": stub_dir,
               "KUBERNETES_API": f"http://127.0.0.1:{server.server_port}",
               "SECRET_LABELS": '{"app.kubernetes.io/name":"kvstore"}', "RETRY_DELAY": "0"}
        return subprocess.run(["/bin/sh", "-c", script, "secrets.sh"] + args, env=env,
                              capture_output=True, text=True, timeout=60)

    def data(name, key):
        return base64.b64decode(FakeApi.secrets[name]["data"][key]).decode()

    try:
        first = run()
        posts = [c for c in FakeApi.calls if c[0] == "POST"]
        if first.returncode != 0 or len(posts) != 2 or any(c[2] != "Bearer x" for c in FakeApi.calls):
            fail(f"secrets.sh, nothing there: exit {first.returncode}, calls {FakeApi.calls}: {first.stderr}")
        secret, tokens = data("kv-cluster-secret", "cluster-secret"), data("kv-client-tokens", "client-tokens")
        if not re.fullmatch(r"[A-Za-z0-9]{64}", secret) or not re.fullmatch(r"write [A-Za-z0-9]{48} default\n", tokens):
            fail(f"secrets.sh made {secret!r} and {tokens!r}")
        meta = FakeApi.secrets["kv-cluster-secret"]["metadata"]
        if meta["annotations"] != {"helm.sh/resource-policy": "keep"} or meta["labels"] != {"app.kubernetes.io/name": "kvstore"}:
            fail(f"secrets.sh: the Secret's metadata {meta}")
        again = run()
        if again.returncode != 0 or any(c[0] == "POST" for c in FakeApi.calls) \
                or data("kv-cluster-secret", "cluster-secret") != secret:
            fail(f"secrets.sh, both there: exit {again.returncode}, calls {FakeApi.calls}: {again.stderr}")
        # Another run made one meanwhile: the GET said absent, the POST finds it (409): kept.
        del FakeApi.secrets["kv-client-tokens"]
        FakeApi.secrets["kv-client-tokens"] = None
        original = FakeApi.do_GET

        def get_absent(self):
            FakeApi.calls.append(("GET", self.path, self.headers.get("Authorization")))
            self.answer(404, {"kind": "Status", "code": 404})
        FakeApi.do_GET = get_absent
        raced = run()
        FakeApi.do_GET = original
        if raced.returncode != 0 or FakeApi.secrets["kv-client-tokens"] is not None \
                or data("kv-cluster-secret", "cluster-secret") != secret:
            fail(f"secrets.sh, a race: exit {raced.returncode}: {raced.stderr}")
        FakeApi.secrets.clear()
        FakeApi.fail_reads = True
        broken = run()
        FakeApi.fail_reads = False
        reads = sum(c[0] == "GET" for c in FakeApi.calls)
        if broken.returncode == 0 or FakeApi.secrets or "HTTP 500" not in broken.stderr or reads != 10:
            fail(f"secrets.sh, the API failing: exit {broken.returncode}, {reads} reads (5 a Secret), "
                 f"made {list(FakeApi.secrets)}: {broken.stderr}")
        step("secrets.sh (real curl, a fake API): makes both Secrets once, keeps them on every later run "
             "and on a race, makes nothing when the API fails")
    finally:
        server.shutdown()


def check_start_script(stub_dir):
    """start.sh: a node that left gets an empty data directory with REJOIN_AFTER_LEAVE only."""
    def run(rejoin, program, marker):
        data = tempfile.mkdtemp(prefix="kv-data.", dir=stub_dir)
        os.makedirs(os.path.join(data, "lost+found"))
        for name in ("members.json", "generation"):
            open(os.path.join(data, name), "w").write("x")
        os.makedirs(os.path.join(data, "fjall", "partitions"))
        if marker:
            open(os.path.join(data, "LEFT"), "w").write("left\n")
        env = {"PATH": "/usr/bin:/bin", "KV_DATA_DIR": data, "REJOIN_AFTER_LEAVE": rejoin,
               "ZONE_FILE": os.path.join(stub_dir, "no-zone")}
        result = subprocess.run(["sh", os.path.join(CHART, "files", "start.sh"), os.path.join(bin_dir, program)],
                                env=env, capture_output=True, text=True)
        return result.returncode, sorted(result.stdout.split())

    # Stub programs that list the data directory they were started with.
    bin_dir = os.path.join(stub_dir, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    for program in ("kvnode", "kvgateway"):
        with open(os.path.join(bin_dir, program), "w") as f:
            f.write('#!/bin/sh\nls -A "$KV_DATA_DIR"\n')
        os.chmod(os.path.join(bin_dir, program), 0o755)
    everything = ["LEFT", "fjall", "generation", "lost+found", "members.json"]
    cases = [
        ("left, rejoin on", "kvnode", "true", True, ["lost+found"]),
        ("left, rejoin off", "kvnode", "false", True, everything),
        ("not left", "kvnode", "true", False, everything[1:]),
        ("a gateway", "kvgateway", "true", True, everything),
    ]
    for what, program, rejoin, marker, want in cases:
        rc, left = run(rejoin, program, marker)
        if rc != 0 or left != want:
            fail(f"start.sh, {what}: exit {rc}, the data directory holds {left}, expected {want}")
    step(f"start.sh: {len(cases)} cases: only a node that left, with rejoinAfterLeave, gets an empty directory")


def check_scripts():
    stub_dir = tempfile.mkdtemp(prefix="kv-deploy-stubs.")
    try:
        for name, body in (("curl", STUB_CURL), ("kvctl", STUB_KVCTL), ("sleep", "#!/bin/sh\n")):
            with open(os.path.join(stub_dir, name), "w") as f:
                f.write(body)
            os.chmod(os.path.join(stub_dir, name), 0o755)
        for name in ("token", "ca.crt"):
            open(os.path.join(stub_dir, name), "w").write("x")

        def scale(n):
            spec = "{}" if n == 0 else '{"replicas": %d}' % n
            return ('{"kind": "Scale", "apiVersion": "autoscaling/v1",\n "metadata": {"name": "kvstore-node"},\n'
                    f' "spec": {spec},\n "status": {{"replicas": 5, "selector": "app=x"}}}}')

        base = {"POD_NAME": "kvstore-node-3", "POD_NAMESPACE": "kv", "STATEFULSET": "kvstore-node",
                "KV_ADMIN_URL": "http://127.0.0.1:7200"}
        cases = [
            # (what, env, leave calls expected, health polls expected)
            ("ordinal 3 of 5 replicas: a restart", {"API_BODY": scale(5)}, 0, 0),
            ("ordinal 3 of 4 replicas: a restart", {"API_BODY": scale(4)}, 0, 0),
            ("ordinal 3 of 3 replicas: leaves, waits for the exit", {"API_BODY": scale(3), "LIVE_UP": "2"}, 1, 3),
            ("ordinal 12 of 3 replicas: leaves", {"API_BODY": scale(3), "POD_NAME": "kv-store-node-12"}, 1, 1),
            ("scaled to zero: does not leave", {"API_BODY": scale(0)}, 0, 0),
            ("the API does not answer: a restart", {"API_RC": "22"}, 0, 0),
            ("an answer without replicas: a restart", {"API_BODY": '{"kind":"Status"}'}, 0, 0),
            ("kvctl unavailable twice, then leaves", {"API_BODY": scale(3), "KVCTL_RCS": "5,5,0"}, 3, 1),
            ("kvctl refused (joining): gives up at once", {"API_BODY": scale(3), "KVCTL_RCS": "4"}, 1, 0),
        ]
        for what, extra, leaves, polls in cases:
            result, calls = run_script("prestop.sh", {**base, **extra}, stub_dir)
            got_leaves = calls.count("kvctl leave")
            got_polls = sum(c.endswith("/health/live") for c in calls)
            if result.returncode != 0 or got_leaves != leaves or got_polls != polls:
                fail(f"prestop.sh, {what}: exit {result.returncode}, {got_leaves} leaves, {got_polls} "
                     f"health polls (expected 0, {leaves}, {polls}); calls {calls}; {result.stderr}")
            if not any("/apis/apps/v1/namespaces/kv/statefulsets/kvstore-node/scale" in c
                       for c in calls):
                fail(f"prestop.sh, {what}: did not read the StatefulSet's scale: {calls}")
        step(f"prestop.sh: {len(cases)} cases: leaves exactly when scaled below its ordinal")

        node = {"kind": "Node", "metadata": {"name": "n1", "labels": {
            "kubernetes.io/hostname": "n1", "topology.kubernetes.io/zone": "eu-west-1b"},
            "managedFields": [{"fieldsV1": {"f:metadata": {"f:labels": {"f:topology.kubernetes.io/zone": {}}}}}]}}
        unlabelled = {"kind": "Node", "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"},
                      "managedFields": [{"fieldsV1": {"f:metadata": {"f:labels": {"f:topology.kubernetes.io/zone": {}}}}}]}}
        zbase = {"NODE_NAME": "n1", "ZONE_LABEL": "topology.kubernetes.io/zone", "ZONE_DEFAULT": "default"}
        zcases = [
            ("a labelled node", {"API_BODY": json.dumps(node)}, 0, "eu-west-1b"),
            ("a labelled node, pretty JSON", {"API_BODY": json.dumps(node, indent=2)}, 0, "eu-west-1b"),
            ("an unlabelled node", {"API_BODY": json.dumps(unlabelled)}, 0, "default"),
            ("another label", {"API_BODY": json.dumps(node), "ZONE_LABEL": "kubernetes.io/hostname"}, 0, "n1"),
            ("the API does not answer", {"API_RC": "7"}, 1, None),
        ]
        for what, extra, rc, zone in zcases:
            zone_file = os.path.join(stub_dir, "zone")
            if os.path.exists(zone_file):
                os.remove(zone_file)
            result, calls = run_script("zone.sh", {**zbase, **extra}, stub_dir)
            got = open(zone_file).read().strip() if os.path.exists(zone_file) else None
            if result.returncode != rc or got != zone or calls != ["curl https://api.test/api/v1/nodes/n1"]:
                fail(f"zone.sh, {what}: exit {result.returncode}, zone {got!r} (expected {rc}, {zone!r}); "
                     f"calls {calls}; {result.stderr}")
        result = subprocess.run(["sh", os.path.join(CHART, "files", "start.sh"), "sh", "-c", 'echo "$KV_ZONE"'],
                                env={"PATH": "/usr/bin:/bin", "ZONE_FILE": os.path.join(stub_dir, "zone"),
                                     "KV_ZONE": "fallback"}, capture_output=True, text=True)
        with open(os.path.join(stub_dir, "zone"), "w") as f:
            f.write("z2\n")
        result2 = subprocess.run(["sh", os.path.join(CHART, "files", "start.sh"), "sh", "-c", 'echo "$KV_ZONE"'],
                                 env={"PATH": "/usr/bin:/bin", "ZONE_FILE": os.path.join(stub_dir, "zone"),
                                      "KV_ZONE": "fallback"}, capture_output=True, text=True)
        if (result.stdout, result2.stdout) != ("fallback\n", "z2\n"):
            fail(f"start.sh: KV_ZONE {result.stdout!r} without a zone file, {result2.stdout!r} with one")
        step(f"zone.sh and start.sh: {len(zcases) + 2} cases")
        check_secrets_script(stub_dir)
        check_start_script(stub_dir)
    finally:
        shutil.rmtree(stub_dir)


# ---------------------------------------------------------------------------------------
# 7. checkov


def checkov(checkov_bin, files, skips, label):
    cmd = [checkov_bin, "--quiet", "--compact", "--skip-download", "--framework", "kubernetes",
           "--output", "json", "--skip-check", ",".join(sorted(skips))]
    for f in files:
        cmd += ["-f", f]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        fail(f"checkov ({label}) printed no JSON (exit {result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}")
    if isinstance(reports, dict):
        reports = [reports]
    failed, passed, unparsed = [], 0, 0
    for report in reports:
        failed += report.get("results", {}).get("failed_checks", [])
        passed += report.get("summary", {}).get("passed", 0)
        unparsed += report.get("summary", {}).get("parsing_errors", 0)
    if unparsed:
        fail(f"checkov ({label}) could not parse {unparsed} files")
    if failed:
        for f in failed:
            print(f"  {f['check_id']} {f['check_name']}: {f['resource']} ({f.get('file_path')})", file=sys.stderr)
        fail(f"checkov ({label}): {len(failed)} failed checks")
    if passed == 0:
        fail(f"checkov ({label}) ran no check: {result.stderr[-2000:]}")
    step(f"checkov ({label}): {passed} checks passed, 0 failed; skipped: {', '.join(sorted(skips))}")


# ---------------------------------------------------------------------------------------


K8S_HEADER = """\
# kvstore for `kubectl apply -f`: the Helm chart deploy/helm/kvstore rendered with its default
# values and deploy/k8s/values.yaml (release `kvstore`, namespace `default`). Generated by
# scripts/check-deploy.sh --write; do not edit (make deploy-check fails when it differs).
# Create the two Secrets it uses first: deploy/k8s/README.md.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkov", required=True, help="the checkov executable")
    parser.add_argument("--write", action="store_true", help="regenerate deploy/k8s/kvstore.yaml")
    args = parser.parse_args()
    step(f"Helm engine {helm.helm_sdk_version()} (helm-python-sdk {helm_version('helm-python-sdk')}), "
         f"kubernetes-validate {helm_version('kubernetes-validate')}")

    lint({}, "default values")
    for path in CI_VALUES:
        lint(load_values(path), os.path.relpath(path, ROOT))
    check_links(os.path.join(ROOT, "deploy", "k8s", "README.md"))
    check_readme(args.write)

    for source, copy in COPIES:
        if args.write:
            shutil.copyfile(source, copy)
        elif open(source, "rb").read() != open(copy, "rb").read():
            fail(f"{os.path.relpath(copy, ROOT)} differs from {os.path.relpath(source, ROOT)}: "
                 "scripts/check-deploy.sh --write copies it")
    step(f"the chart's copies of {len(COPIES)} files of deploy/ are the same")

    ci5 = load_values(os.path.join(CHART, "ci", "values-5-nodes-3-zones.yaml"))
    extra_volume = {"extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
                    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corporate-ca", "readOnly": True}]}
    renderings = [
        # (label, values, namespace, rendered as an upgrade)
        ("default values", {}, "kvstore", False),
        # helm/helm#12650: an upgrade that leaves replicas out resets them to 1.
        ("HPAs on, an upgrade", {"node": {"autoscaling": {"enabled": True}}}, "kvstore", True),
        ("overrides, OpenShift, monitoring", {
            "fullnameOverride": "store", "podLabels": {"team": "data"},
            "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
            "securityContext": {"runAsUser": None, "runAsGroup": None},
            "node": extra_volume, "gateway": extra_volume, "zone": {"fromNodeLabel": True},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
            "grafanaDashboard": {"enabled": True}, "serviceMonitor": {"enabled": True}}, "kvstore", False),
        ("5 nodes, 3 zones", ci5, "kvstore", False),
        ("TLS, no API access", {"tls": {"enabled": True, "existingSecret": "kvstore-tls"},
                                "zone": {"fromNodeLabel": False}, "node": {"decommissionOnScaleDown": False},
                                "clientTokens": {"enabled": False}, "serviceMonitor": {"enabled": True},
                                "adminTokens": {"existingSecret": "kvstore-admin-tokens"}}, "db", False),
        ("deploy/k8s", load_values(K8S_VALUES), "default", False),
    ]
    out_dir = tempfile.mkdtemp(prefix="kv-deploy.")
    try:
        with helm.Chart.load(CHART) as chart:
            check_values(chart)
            files = {}
            for label, values, namespace, upgrade in renderings:
                text, objects = render(chart, values, namespace, upgrade)
                # GitOps (Argo CD renders with `helm template` at every sync): the same values
                # render the same manifests, so no sync replaces a secret or anything else.
                if render(chart, values, namespace, upgrade)[0] != text:
                    fail(f"{label}: two renderings of the same values differ")
                validate(objects, label)
                check_properties(label, objects, values, namespace)
                path = os.path.join(out_dir, re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".yaml")
                with open(path, "w") as f:
                    f.write(text)
                files[label] = (path, K8S_HEADER + text)
        check_scripts()

        k8s = files["deploy/k8s"][1]
        if args.write:
            with open(K8S_MANIFEST, "w") as f:
                f.write(k8s)
            step(f"wrote {os.path.relpath(K8S_MANIFEST, ROOT)}")
        else:
            current = open(K8S_MANIFEST).read() if os.path.exists(K8S_MANIFEST) else ""
            if current != k8s:
                diff = difflib.unified_diff(current.splitlines(), k8s.splitlines(),
                                            "deploy/k8s/kvstore.yaml", "fresh rendering", lineterm="", n=2)
                print("\n".join(list(diff)[:60]), file=sys.stderr)
                fail("deploy/k8s/kvstore.yaml differs from the chart's rendering; "
                     "regenerate it with scripts/check-deploy.sh --write")
            step("deploy/k8s/kvstore.yaml matches the chart")

        openshift = "overrides, OpenShift, monitoring"
        chart_files = [p for label, (p, _) in files.items() if label not in ("deploy/k8s", openshift)]
        checkov(args.checkov, chart_files, CHECKOV_SKIPS, "chart renderings")
        checkov(args.checkov, [files[openshift][0]], {**CHECKOV_SKIPS, **CHECKOV_SKIPS_OPENSHIFT}, openshift)
        checkov(args.checkov, [K8S_MANIFEST], {**CHECKOV_SKIPS, **CHECKOV_SKIPS_K8S}, "deploy/k8s/kvstore.yaml")
    finally:
        shutil.rmtree(out_dir)
    step("ok")


if __name__ == "__main__":
    main()
