//! The admission webhook over real HTTPS: AdmissionReview fixtures in, JSONPatch out, the
//! patch applied with json-patch, and the patched Pod checked against the Kubernetes 1.33
//! schemas in strict mode by `kubernetes-validate` (installed by `.ci/run`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::TempDir;
use serde_json::{Value, json};

struct Webhook {
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    dir: TempDir,
}

fn write_cert(dir: &Path) -> (PathBuf, PathBuf, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = ck.cert.pem();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, cert_pem)
}

fn client_trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

async fn webhook() -> Webhook {
    let dir = TempDir::new();
    let (cert, key, pem) = write_cert(&dir.0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(jwtgate::inject::serve(
        listener,
        cert,
        key,
        jwtgate::inject::Defaults::default(),
        std::future::pending(),
    ));
    Webhook {
        addr,
        client: client_trusting(&pem),
        dir,
    }
}

fn pod(labels: Value, annotations: Value, extra_spec: Value) -> Value {
    let mut spec = json!({
        "containers": [{
            "name": "gateway",
            "image": "wso2/wso2am-universal-gw:4.5.0",
            "ports": [{"containerPort": 8243, "name": "https"}],
        }]
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gw-7d4f9", "generateName": "gw-", "namespace": "apis", "labels": labels, "annotations": annotations},
        "spec": spec,
    })
}

fn review(object: Value, kind: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": kind,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": kind,
            "namespace": "apis",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
        }
    })
}

fn pod_kind() -> Value {
    json!({"group": "", "version": "v1", "kind": "Pod"})
}

impl Webhook {
    async fn ask(&self, path: &str, body: &Value) -> Value {
        let resp = self
            .client
            .post(format!("https://localhost:{}{path}", self.addr.port()))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        answer["response"].clone()
    }

    /// Applies the response's patch to `object` and returns the result.
    fn patched(&self, object: &Value, response: &Value) -> Value {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut out = object.clone();
        json_patch::patch(&mut out, &patch).unwrap();
        out
    }

    fn save(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.dir.0.join(format!("{name}.json"));
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p
    }
}

/// `kubernetes-validate --strict` on these files against the Kubernetes 1.29 and 1.33
/// schemas (the oldest and newest minor the injector supports). Outside CI, a machine
/// without it skips loudly; in CI it is required.
pub fn kubernetes_validate(files: &[PathBuf]) {
    for version in ["1.29.0", "1.33.0"] {
        let out = std::process::Command::new("kubernetes-validate")
            .args(["--strict", "--no-warn", "-k", version])
            .args(files)
            .output();
        match out {
            Ok(out) => assert!(
                out.status.success(),
                "kubernetes-validate {version} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(_) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "SKIPPED: kubernetes-validate not installed (pip install kubernetes-validate)"
                );
                return;
            }
            Err(e) => panic!("kubernetes-validate is required in CI: {e}"),
        }
    }
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    pod["spec"][list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[tokio::test]
async fn labelled_namespace_pod_gets_a_schema_valid_hardened_sidecar() {
    let w = webhook().await;
    let object = pod(
        json!({"app": "gw"}),
        json!({"jwtgate.io/upstream-port": "8243"}),
        json!({}),
    );
    let r = w
        .ask(
            "/mutate/namespace-enabled",
            &review(object.clone(), pod_kind()),
        )
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    let out = w.patched(&object, &r);
    let c = container(&out, "containers", "jwtgate").expect("sidecar added");
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        c["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["args"].to_string().contains("http://127.0.0.1:8243"));
    assert_eq!(
        out["metadata"]["annotations"]["jwtgate.io/status"],
        "injected"
    );
    assert_eq!(
        out["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(
        out["metadata"]["annotations"]["jwtgate.io/upstream-port"],
        "8243"
    );
    assert_eq!(
        out["spec"]["containers"][0]["name"], "gateway",
        "the app is untouched"
    );
    kubernetes_validate(&[w.save("plain-pod", &out)]);
}

/// What a rollout needs, through the real webhook: the config's secrets in the sidecar's
/// environment, the app held past jwtgate's shutdown delay, a grace period covering delay
/// and drain, threads from the CPU request, the app's own scrape annotations kept.
#[tokio::test]
async fn injected_pods_survive_a_rollout() {
    let w = webhook().await;
    for prestop in ["sleep", "exec"] {
        let object = pod(
            json!({}),
            json!({"jwtgate.io/upstream-port": "8243", "jwtgate.io/env-from-secret": "jwtgate-env",
                   "jwtgate.io/app-prestop": prestop, "jwtgate.io/cpu-request": "1500m",
                   "prometheus.io/scrape": "true", "prometheus.io/port": "9543"}),
            json!({}),
        );
        let r = w
            .ask(
                "/mutate/namespace-enabled",
                &review(object.clone(), pod_kind()),
            )
            .await;
        assert_eq!(r["allowed"], true, "{r}");
        let out = w.patched(&object, &r);
        let c = container(&out, "containers", "jwtgate").expect("sidecar added");
        assert_eq!(
            c["envFrom"],
            json!([{"secretRef": {"name": "jwtgate-env", "optional": false}}])
        );
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.windows(2).any(|w| w == ["--threads", "2"]), "{args:?}");
        assert_eq!(out["spec"]["terminationGracePeriodSeconds"], 40);
        let app = container(&out, "containers", "gateway").unwrap();
        let pre = &app["lifecycle"]["preStop"];
        match prestop {
            "sleep" => assert_eq!(pre["sleep"]["seconds"], 10, "{pre}"),
            _ => assert_eq!(pre["exec"]["command"], json!(["sleep", "10"]), "{pre}"),
        }
        assert_eq!(
            out["metadata"]["annotations"]["prometheus.io/port"], "9543",
            "the app's own"
        );
        kubernetes_validate(&[w.save(&format!("rollout-{prestop}"), &out)]);
    }
}

/// A Job's pod (and a Never-restarting one) in a labelled namespace is created without the
/// sidecar, marked with the reason; before, it was refused (no upstream port) or, injected,
/// never completed.
#[tokio::test]
async fn job_pods_are_let_through_marked_skipped() {
    let w = webhook().await;
    let mut job = pod(json!({}), json!({}), json!({"restartPolicy": "OnFailure"}));
    job["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": "nightly-report-29", "uid": "6f1d3c9e-0b8a-4a57-9d0e-2c1f8e7b5a41", "controller": true}]);
    let r = w
        .ask(
            "/mutate/namespace-enabled",
            &review(job.clone(), pod_kind()),
        )
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let out = w.patched(&job, &r);
    assert_eq!(
        out["metadata"]["annotations"]["jwtgate.io/status"],
        "skipped"
    );
    let reason = out["metadata"]["annotations"]["jwtgate.io/skip-reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("Job nightly-report-29"), "{reason}");
    assert_eq!(
        out["spec"]["containers"].as_array().unwrap().len(),
        1,
        "no sidecar"
    );
    kubernetes_validate(&[w.save("job-skipped", &out)]);
}

#[tokio::test]
async fn native_sidecar_and_pod_opt_in() {
    let w = webhook().await;
    let object = pod(
        json!({"jwtgate.io/inject": "true"}),
        json!({"jwtgate.io/upstream-port": "8243", "jwtgate.io/native-sidecar": "true",
               "jwtgate.io/memory-limit": "96Mi", "jwtgate.io/cpu-limit": "1"}),
        json!({"initContainers": [{"name": "migrate", "image": "busybox:1.36"}]}),
    );
    let r = w
        .ask("/mutate/pod-opt-in", &review(object.clone(), pod_kind()))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let out = w.patched(&object, &r);
    let init = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 2);
    assert_eq!(
        init[0]["name"], "migrate",
        "existing init containers run first"
    );
    assert_eq!(init[1]["name"], "jwtgate");
    assert_eq!(init[1]["restartPolicy"], "Always");
    assert_eq!(init[1]["resources"]["limits"]["memory"], "96Mi");
    assert!(container(&out, "containers", "jwtgate").is_none());
    kubernetes_validate(&[w.save("native-sidecar", &out)]);
}

#[tokio::test]
async fn opted_out_unlabelled_and_already_injected_pods_are_untouched() {
    let w = webhook().await;
    let opted_out = pod(
        json!({"jwtgate.io/inject": "false"}),
        json!({"jwtgate.io/upstream-port": "8243"}),
        json!({}),
    );
    let unlabelled = pod(
        json!({}),
        json!({"jwtgate.io/upstream-port": "8243"}),
        json!({}),
    );
    let injected = pod(
        json!({}),
        json!({"jwtgate.io/upstream-port": "8243", "jwtgate.io/status": "injected"}),
        json!({}),
    );
    let has_container = pod(
        json!({}),
        json!({"jwtgate.io/upstream-port": "8243"}),
        json!({"containers": [{"name": "jwtgate", "image": "x"}]}),
    );
    for (path, object) in [
        ("/mutate/namespace-enabled", &opted_out),
        ("/mutate/pod-opt-in", &opted_out),
        ("/mutate/pod-opt-in", &unlabelled),
        ("/mutate/namespace-enabled", &injected),
        ("/mutate/namespace-enabled", &has_container),
    ] {
        let r = w.ask(path, &review(object.clone(), pod_kind())).await;
        assert_eq!(r["allowed"], true, "{path}: {r}");
        assert!(r.get("patch").is_none(), "{path}: unexpected patch {r}");
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_message() {
    let w = webhook().await;
    let bad = pod(
        json!({}),
        json!({"jwtgate.io/upstream-port": "8243", "jwtgate.io/port": "eighty"}),
        json!({}),
    );
    let r = w
        .ask("/mutate/namespace-enabled", &review(bad, pod_kind()))
        .await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("jwtgate.io/port"),
        "{r}"
    );
    assert!(r.get("patch").is_none(), "never a half-injection");

    let missing = pod(json!({}), json!({}), json!({}));
    let r = w
        .ask("/mutate/namespace-enabled", &review(missing, pod_kind()))
        .await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("jwtgate.io/upstream-port")
    );

    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}});
    let r = w
        .ask(
            "/mutate/namespace-enabled",
            &review(
                cm,
                json!({"group": "", "version": "v1", "kind": "ConfigMap"}),
            ),
        )
        .await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("Pods only"),
        "{r}"
    );

    let r = w
        .ask("/mutate/namespace-enabled", &json!({"hello": "world"}))
        .await;
    assert_eq!(r["allowed"], false);
    let r = w.ask("/mutate/namespace-enabled", &json!([1, 2])).await;
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{r}"
    );
}

#[tokio::test]
async fn certificate_rotation_is_picked_up() {
    let w = webhook().await;
    // Rotate: new key and certificate written over the old files.
    let (_, _, new_pem) = write_cert(&w.dir.0);
    let trusting_new = client_trusting(&new_pem);
    let url = format!("https://localhost:{}/healthz", w.addr.port());
    let mut ok = false;
    for _ in 0..100 {
        if trusting_new
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the new certificate was not served within 10 s");
    assert!(
        w.client.get(&url).send().await.is_err(),
        "the old certificate is gone"
    );
}

/// A CA and leaves it signs, as cert-manager's CA issuer makes them.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "jwtgate-injector-ca");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A fresh key and serving certificate for these names: (key PEM, certificate PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        (key.serialize_pem(), leaf.pem())
    }
}

/// The webhook's serving certificate renewed by the CA while the API server keeps calling
/// with the one bundle it has (the CA's): no handshake fails, and the new certificate is
/// served. The renewal lands slowly — the new key a whole reload period before the new
/// certificate, as a copy that is not one atomic Secret-volume swap does — and the webhook
/// must keep serving the old pair until the new one matches (before, it served the new key
/// with the old certificate and every handshake failed). With the bundle taken from the
/// serving certificate (the old cert-manager layout), every call after a renewal would fail
/// until the bundle caught up; under one CA the bundle never changes.
#[tokio::test]
async fn serving_certificate_renewal_under_a_ca_fails_no_handshake() {
    let dir = TempDir::new();
    let ca = Ca::new();
    let (key, cert) = ca.issue(&["localhost", "127.0.0.1"]);
    std::fs::write(dir.0.join("tls.key"), key).unwrap();
    std::fs::write(dir.0.join("tls.crt"), cert).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(jwtgate::inject::serve(
        listener,
        dir.0.join("tls.crt"),
        dir.0.join("tls.key"),
        jwtgate::inject::Defaults::default(),
        std::future::pending(),
    ));
    // A new connection and a full handshake (no session resumption, which would skip the
    // certificate) for every call, trusting only the CA.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled();
    // A client per call: nothing pooled, nothing resumed.
    let client = || {
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .pool_max_idle_per_host(0)
            .resolve("renewed.localhost", addr)
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{}/healthz", addr.port());
    let renewed = format!("https://renewed.localhost:{}/healthz", addr.port());
    // The renewal: a new key and certificate from the same CA, with one more name so the
    // test can tell which one is served.
    let (new_key, new_cert) = ca.issue(&["localhost", "127.0.0.1", "renewed.localhost"]);
    let mut calls = 0;
    let mut served_new = false;
    let start = std::time::Instant::now();
    let mut stage = 0;
    for i in 0..1000 {
        let t = start.elapsed();
        if stage == 0 && t > Duration::from_secs(1) {
            std::fs::write(dir.0.join("tls.key"), &new_key).unwrap();
            stage = 1;
        } else if stage == 1 && t > Duration::from_secs(8) {
            std::fs::write(dir.0.join("tls.crt"), &new_cert).unwrap();
            stage = 2;
        }
        let r = client().get(&url).send().await;
        assert!(
            r.as_ref().is_ok_and(|r| r.status() == 200),
            "call {i} failed: {r:?}"
        );
        calls += 1;
        if stage == 2
            && client()
                .get(&renewed)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        {
            served_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served_new,
        "the renewed certificate was not served after {calls} calls"
    );
}

/// Injector config mistakes name the key.
#[test]
fn injector_config_errors_name_the_key() {
    let dir = TempDir::new();
    for (text, key) in [
        ("app_prestop = \"later\"\n", "app_prestop"),
        (
            "env_from_secrets = [\"ok\", \"Not_OK\"]\n",
            "env_from_secrets",
        ),
        ("env_from_config_maps = [\"\"]\n", "env_from_config_maps"),
        ("shutdown_delay_s = -1\n", "shutdown_delay_s"),
    ] {
        let path = dir.0.join("inject.toml");
        std::fs::write(&path, text).unwrap();
        let err = jwtgate::inject::load_defaults(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}
