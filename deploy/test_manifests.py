#!/usr/bin/env python3
"""Checks deploy/: every built-in kind against the Kubernetes 1.33 schemas (strict), the
custom resources (cert-manager, Prometheus Operator, kustomize) by structure and by their
cross-references, the example's jwtgate config with `jwtgate check`, and every metric an
alert or the dashboard uses against the metrics jwtgate defines.

Usage: python deploy/test_manifests.py path/to/jwtgate
Prints 'N passed, N failed' and exits 1 on any failure.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import yaml
import kubernetes_validate

ROOT = pathlib.Path(__file__).resolve().parent
K8S_VERSION = "1.33.0"
CUSTOM_GROUPS = ("cert-manager.io/", "monitoring.coreos.com/", "kustomize.config.k8s.io/")

results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        results.append((name, f"{type(e).__name__}: {e}"))


def docs():
    out = []
    for path in sorted(ROOT.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((path.relative_to(ROOT), i, doc))
    return out


ALL = docs()


def by_kind(kind):
    return [d for _, _, d in ALL if d.get("kind") == kind]


def one(kind, name=None):
    found = [d for d in by_kind(kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def validate_builtin(doc):
    def run():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    return run


for path, i, doc in ALL:
    api = doc.get("apiVersion", "")
    if not api.startswith(CUSTOM_GROUPS):
        check(f"schema {K8S_VERSION} strict: {path}#{i} {doc.get('kind')}", validate_builtin(doc))


def kustomizations():
    for path, _, doc in ALL:
        if doc.get("kind") != "Kustomization":
            continue
        base = ROOT / path.parent
        for r in doc.get("resources", []):
            assert (base / r).exists(), f"{path}: resource {r} does not exist"
        for g in doc.get("configMapGenerator", []):
            for f in g.get("files", []):
                assert (base / f).exists(), f"{path}: generator file {f} does not exist"
    # Every manifest is reachable from some kustomization.
    listed = set()
    for path, _, doc in ALL:
        if doc.get("kind") == "Kustomization":
            listed.update(str(path.parent / r) for r in doc.get("resources", []))
    for path, _, doc in ALL:
        if doc.get("kind") != "Kustomization" and str(path) not in listed:
            raise AssertionError(f"{path} is in no kustomization")


check("kustomizations list existing files and cover every manifest", kustomizations)


def cert_manager():
    # selfSigned Issuer → CA Certificate → CA Issuer → serving Certificate; the webhook's
    # bundle comes from the CA, so a serving-certificate renewal never changes it.
    selfsigned = one("Issuer", "jwtgate-selfsigned")
    assert "selfSigned" in selfsigned["spec"]
    ca = one("Certificate", "jwtgate-ca")
    assert ca["spec"]["isCA"] is True
    assert ca["spec"]["issuerRef"]["name"] == selfsigned["metadata"]["name"]
    assert ca["spec"]["privateKey"].get("rotationPolicy") == "Never", "the CA keeps its key"
    ca_issuer = one("Issuer", "jwtgate-ca")
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    cert = one("Certificate", "jwtgate-injector")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    spec = cert["spec"]
    for key in ("secretName", "dnsNames", "issuerRef"):
        assert key in spec, f"Certificate.spec.{key} missing"
    assert spec["issuerRef"]["name"] == ca_issuer["metadata"]["name"], "served by the CA issuer"
    assert not spec.get("isCA"), "the serving certificate is no CA"
    svc = one("Service", "jwtgate-injector")
    ns = svc["metadata"]["namespace"]
    assert f"jwtgate-injector.{ns}.svc" in spec["dnsNames"]
    dep = one("Deployment", "jwtgate-injector")
    secrets = [v["secret"]["secretName"] for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert spec["secretName"] in secrets, "the injector must mount the Certificate's secret"
    mwc = one("MutatingWebhookConfiguration")
    ref = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert ref == f"{ca['metadata']['namespace']}/{ca['metadata']['name']}", \
        "the bundle must be the CA's, not the serving certificate's"


check("cert-manager CA chain wired to the injector and the webhook", cert_manager)


def webhook():
    mwc = one("MutatingWebhookConfiguration")
    paths = sorted(w["clientConfig"]["service"]["path"] for w in mwc["webhooks"])
    assert paths == ["/mutate/namespace-enabled", "/mutate/pod-opt-in"], paths
    for w in mwc["webhooks"]:
        assert w["sideEffects"] == "None"
        assert w["failurePolicy"] == "Fail"
        assert w["timeoutSeconds"] <= 10
        assert w["reinvocationPolicy"] == "IfNeeded"
        excluded = [e for e in w["namespaceSelector"]["matchExpressions"]
                    if e["key"] == "kubernetes.io/metadata.name"]
        assert excluded and "jwtgate-system" in excluded[0]["values"]
    dep = one("Deployment", "jwtgate-injector")
    assert dep["spec"]["replicas"] >= 2
    pdb = one("PodDisruptionBudget", "jwtgate-injector")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


check("webhook: both opt-in paths, Fail, no side effects, HA", webhook)


def example_traffic_path():
    dep = one("Deployment", "gateway")
    pod = dep["spec"]["template"]["spec"]
    jg = [c for c in pod["containers"] if c["name"] == "jwtgate"][0]
    ports = {p["name"]: p["containerPort"] for p in jg["ports"]}
    svc = one("Service", "gateway")
    assert svc["spec"]["ports"][0]["targetPort"] == "jwtgate", "Service must target jwtgate's port"
    app = [c for c in pod["containers"] if c["name"] == "app"][0]
    assert any("127.0.0.1" in a for a in app.get("args", [])), "the app must bind to 127.0.0.1"
    assert "preStop" in app.get("lifecycle", {}), "the app needs a preStop sleep"
    np = one("NetworkPolicy")
    allowed = sorted({p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]})
    assert allowed == sorted([ports["jwtgate"], ports["jwtgate-admin"]]), allowed
    # The admin port only from chosen namespaces: monitoring, and the key manager's.
    admin_from = [rule.get("from") for rule in np["spec"]["ingress"]
                  if any(p["port"] == ports["jwtgate-admin"] for p in rule["ports"])]
    assert all(admin_from), "the admin port must never be open to every namespace"
    selectors = [f["namespaceSelector"]["matchLabels"] for rule in admin_from for f in rule]
    assert {"kubernetes.io/metadata.name": "monitoring"} in selectors, selectors
    assert {"jwtgate.io/key-manager": "true"} in selectors, "push/notify from the key manager"
    sc = jg["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]


check("example: Service → jwtgate → app on localhost, NetworkPolicy, hardening", example_traffic_path)


def example_config(binary):
    def run():
        cm = one("ConfigMap", "jwtgate")
        toml = cm["data"]["jwtgate.toml"]
        path = ROOT / ".example-jwtgate.toml"
        path.write_text(toml)
        try:
            env = dict(os.environ, JWTGATE_PUSH_TOKEN="x" * 32, WSO2_CP_PASSWORD="secret-pw")
            out = subprocess.run([binary, "check", "--config", str(path)], capture_output=True, text=True, env=env)
        finally:
            path.unlink()
        assert out.returncode == 0, out.stderr
        assert "secret-pw" not in out.stdout and "x" * 32 not in out.stdout, "a secret was printed"
    return run


def monitoring():
    pm = one("PodMonitor", "jwtgate")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = pm["spec"]["podMetricsEndpoints"]
    assert endpoints and all(e["port"] == "jwtgate-admin" and e["path"] == "/metrics" for e in endpoints)
    key = pm["spec"]["selector"]["matchExpressions"][0]["key"]
    gw = one("Deployment", "gateway")
    assert key in gw["spec"]["template"]["metadata"]["labels"], "the PodMonitor must select the example pods"
    # HTTPS admin listeners: a second PodMonitor, and the two never select the same pod.
    tls = one("PodMonitor", "jwtgate-https")
    assert all(e.get("scheme") == "https" and e["tlsConfig"]["ca"] for e in tls["spec"]["podMetricsEndpoints"])
    assert tls["spec"]["selector"]["matchLabels"] == {"jwtgate.io/admin-scheme": "https"}
    assert {"key": "jwtgate.io/admin-scheme", "operator": "DoesNotExist"} in pm["spec"]["selector"]["matchExpressions"]
    pr = one("PrometheusRule")
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    plain = yaml.safe_load((ROOT / "monitoring" / "jwtgate-rules.yml").read_text())
    assert pr["spec"] == plain, "prometheusrule.yaml and jwtgate-rules.yml differ"
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"]}
    for needed in ("JwtgateNotReady", "JwtgateKeysStale", "JwtgateRevocationStale",
                   "JwtgateRejectionSpike", "JwtgateUpstreamErrors"):
        assert needed in alerts, needed


check("monitoring: PodMonitor, PrometheusRule == plain rules file", monitoring)


def metric_names():
    # Each component registers its own families: every metric name written in src/, unit
    # tests (after `#[cfg(test)]`) left out.
    defined = set()
    for f in (ROOT.parent / "src").rglob("*.rs"):
        code = f.read_text().split("#[cfg(test)]")[0]
        defined.update(re.findall(r'"(jwtgate_[a-z_]+)"', code))
    assert len(defined) > 10, defined
    used = set()
    rules = (ROOT / "monitoring" / "jwtgate-rules.yml").read_text()
    dash = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [rules] + [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for e in exprs:
        used.update(re.findall(r"\b(jwtgate_[a-z_]+)", e))
    unknown = set()
    for u in used:
        base = re.sub(r"_(bucket|sum|count)$", "", u)
        if u not in defined and base not in defined:
            unknown.add(u)
    assert not unknown, f"unknown metrics: {sorted(unknown)}"
    assert dash["panels"] and all(p["targets"] for p in dash["panels"])


check("alerts and dashboard use only metrics jwtgate defines", metric_names)

def documented_secret_keys():
    """Secret name → keys, from the README's `kubectl create secret generic` steps."""
    readme = (ROOT.parent / "README.md").read_text()
    keys = {}
    for cmd in re.findall(r"create secret generic ([a-z0-9-]+)((?:\\\n|[^\n])*)", readme):
        keys.setdefault(cmd[0], set()).update(re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", cmd[1]))
    return keys


def provided_env(container, secret_keys):
    """Variable names a container's env gives, and what is missing for a reference."""
    names, missing = set(), []
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["key"] not in secret_keys.get(ref["name"], set()):
            missing.append(f"{e['name']}: key {ref['key']} of Secret {ref['name']} is not documented")
        names.add(e["name"])
    for src in container.get("envFrom", []):
        ref = src.get("secretRef")
        if ref:
            names.update(secret_keys.get(ref["name"], set()))
    return names, missing


def example_env(binary):
    # Every ${VAR} of the example jwtgate.toml must reach the sidecar: in the hand-written
    # example, and in a pod the real injector (dry run, the shipped injector config, the
    # annotations the README gives) patches; each from a Secret key a README step creates.
    def run():
        toml = one("ConfigMap", "jwtgate")["data"]["jwtgate.toml"]
        needed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", toml))
        assert needed, "the example config references no variable: this check would prove nothing"
        keys = documented_secret_keys()
        dep = one("Deployment", "gateway")
        template = dep["spec"]["template"]
        jg = [c for c in template["spec"]["containers"] if c["name"] == "jwtgate"][0]
        names, missing = provided_env(jg, keys)
        assert not missing, missing
        assert needed <= names, f"hand-written example lacks {sorted(needed - names)}"

        inject_toml = one("ConfigMap", "jwtgate-injector")["data"]["inject.toml"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               # The hand-written example opts out of injection; the injected one must not.
               "metadata": {"name": "gw",
                            "labels": {k: v for k, v in template["metadata"]["labels"].items()
                                       if not k.startswith("jwtgate.io/")},
                            "annotations": {"jwtgate.io/upstream-port": "8081",
                                            "jwtgate.io/env-from-secret": "jwtgate-env"}},
               "spec": {**template["spec"],
                        "containers": [c for c in template["spec"]["containers"] if c["name"] != "jwtgate"],
                        "volumes": [v for v in template["spec"].get("volumes", [])
                                    if not v["name"].startswith("jwtgate")]}}
        cfg = ROOT / ".inject-dry-run.toml"
        cfg.write_text(inject_toml)
        try:
            out = subprocess.run([binary, "inject", "--config", str(cfg), "--dry-run", "-"],
                                 input=json.dumps(pod), capture_output=True, text=True)
        finally:
            cfg.unlink()
        assert out.returncode == 0, out.stderr
        patched = json.loads(out.stdout)
        sidecar = [c for c in patched["spec"]["containers"] if c["name"] == "jwtgate"]
        assert sidecar, f"not injected: {out.stderr}"
        sidecar = sidecar[0]
        names, missing = provided_env(sidecar, keys)
        assert not missing, missing
        assert needed <= names, f"an injected pod lacks {sorted(needed - names)}"
    return run


if len(sys.argv) > 1:
    check("example ConfigMap passes `jwtgate check`", example_config(sys.argv[1]))
    check("every ${VAR} of the example config reaches the sidecar, hand-written and injected",
          example_env(sys.argv[1]))
else:
    results.append(("example ConfigMap passes `jwtgate check`", "no jwtgate binary given"))

failed = [(n, e) for n, e in results if e]
for n, e in results:
    print(("ok      " if not e else "FAILED  ") + n + (f"\n        {e}" if e else ""))
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
