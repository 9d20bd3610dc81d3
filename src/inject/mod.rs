//! `jwtgate inject`: a Kubernetes mutating admission webhook (AdmissionReview
//! `admission.k8s.io/v1`, HTTPS) that adds the jwtgate sidecar to opted-in pods.
//!
//! Paths (one per row of the opt-in truth table, see [`patch`]):
//! `POST /mutate/namespace-enabled` for namespaces labelled `jwtgate.io/inject=enabled`,
//! `POST /mutate/pod-opt-in` for pods labelled `"true"` elsewhere; `GET /healthz`.
//!
//! The certificate and key are re-read when their files change (cert-manager rotates them);
//! a rotation that fails to load keeps the previous pair and says so in the log.

pub mod patch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tokio::net::TcpListener;

use crate::config::{ConfigError, ConfigErrors};
pub use patch::{Decision, Defaults, Mode};

/// Largest AdmissionReview accepted.
const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;

/// Reads injector defaults (TOML; unknown keys are errors naming the key).
pub fn load_defaults(path: &Path) -> Result<Defaults, ConfigErrors> {
    let one = |key: &str, message: String| {
        ConfigErrors(vec![ConfigError {
            key: key.to_owned(),
            message,
        }])
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| one("--config", format!("cannot read {}: {e}", path.display())))?;
    let value: toml::Value = text
        .parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| one("(file)", e.to_string().replace('\n', " ")))?;
    let d: Defaults = serde_path_to_error::deserialize(value)
        .map_err(|e| one(&e.path().to_string(), e.into_inner().to_string()))?;
    let mut problems = Vec::new();
    if d.port == d.admin_port {
        problems.push(ConfigError {
            key: "admin_port".into(),
            message: "must differ from port".into(),
        });
    }
    if d.image.trim().is_empty() {
        problems.push(ConfigError {
            key: "image".into(),
            message: "must not be empty".into(),
        });
    }
    if !["sleep", "exec", "none"].contains(&d.app_prestop.as_str()) {
        problems.push(ConfigError {
            key: "app_prestop".into(),
            message: format!(
                "{:?} must be \"sleep\", \"exec\" or \"none\"",
                d.app_prestop
            ),
        });
    }
    for (key, names) in [
        ("env_from_secrets", &d.env_from_secrets),
        ("env_from_config_maps", &d.env_from_config_maps),
    ] {
        if let Some(bad) = names.iter().find(|n| !patch::is_dns_label(n)) {
            problems.push(ConfigError {
                key: key.into(),
                message: format!("{bad:?} is not a resource name (DNS-1123 subdomain)"),
            });
        }
    }
    if problems.is_empty() {
        Ok(d)
    } else {
        Err(ConfigErrors(problems))
    }
}

/// What the webhook would make of `pod` in a namespace labelled
/// `jwtgate.io/inject=enabled`: the pod as patched (unchanged, with the reason, when
/// skipped), or the refusal.
pub fn dry_run(
    pod: &serde_json::Value,
    defaults: &Defaults,
) -> Result<(serde_json::Value, Option<&'static str>), String> {
    let parsed: Pod = serde_json::from_value(pod.clone()).map_err(|e| format!("not a Pod: {e}"))?;
    let mut out = pod.clone();
    match patch::decide(&parsed, Mode::NamespaceEnabled, defaults) {
        Decision::Skip(why) => Ok((out, Some(why))),
        Decision::Patch(p) | Decision::Marked(p) => {
            json_patch::patch(&mut out, &p).map_err(|e| format!("patch did not apply: {e}"))?;
            Ok((out, None))
        }
        Decision::Deny(message) => Err(format!("refused: {message}")),
    }
}

/// The answer to one AdmissionReview body, arriving on `mode`'s path.
pub fn review(body: &[u8], mode: Mode, defaults: &Defaults) -> AdmissionReview<DynamicObject> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return AdmissionResponse::invalid(format!("jwtgate: malformed AdmissionReview ({e})"))
                .into_review();
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => {
            return AdmissionResponse::invalid("jwtgate: AdmissionReview has no request")
                .into_review();
        }
    };
    let response = AdmissionResponse::from(&request);
    let kind = &request.kind;
    if kind.kind != "Pod" || !kind.group.is_empty() {
        return response
            .deny(format!(
                "jwtgate injects into Pods only, not {}/{} {}: check the webhook's rules",
                kind.group, kind.version, kind.kind
            ))
            .into_review();
    }
    if request.operation != Operation::Create {
        return response.into_review();
    }
    let pod: Result<Pod, String> = request
        .object
        .as_ref()
        .ok_or_else(|| "the request carries no object".to_owned())
        .and_then(|o| serde_json::to_value(o).map_err(|e| e.to_string()))
        .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()));
    let pod = match pod {
        Ok(p) => p,
        Err(e) => {
            return response
                .deny(format!("jwtgate: not a valid Pod ({e})"))
                .into_review();
        }
    };
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let namespace = request.namespace.clone().unwrap_or_default();
    let decision = patch::decide(&pod, mode, defaults);
    let patched = if matches!(decision, Decision::Marked(_)) {
        "not injected: jwtgate cannot serve this pod (see its jwtgate.io/skip-reason)"
    } else {
        "sidecar injected"
    };
    match decision {
        Decision::Skip(why) => {
            tracing::debug!(%namespace, pod = %name, why, "not injected");
            response.into_review()
        }
        Decision::Patch(p) | Decision::Marked(p) => {
            tracing::info!(%namespace, pod = %name, "{patched}");
            match response.clone().with_patch(p) {
                Ok(r) => r.into_review(),
                Err(e) => response
                    .deny(format!("jwtgate: patch could not be encoded ({e})"))
                    .into_review(),
            }
        }
        Decision::Deny(message) => {
            tracing::warn!(%namespace, pod = %name, %message, "injection refused");
            response.deny(format!("jwtgate: {message}")).into_review()
        }
    }
}

/// Serves the webhook until `shutdown` resolves. Fails at once if the certificate cannot be
/// loaded.
pub async fn serve(
    listener: TcpListener,
    cert: PathBuf,
    key: PathBuf,
    defaults: Defaults,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let (store, acceptor) = crate::tls::CertStore::open(
        &cert,
        &key,
        ("--tls-cert", "--tls-key"),
        &[b"h2", b"http/1.1"],
    )?;
    let reload = tokio::spawn(store.watch("webhook"));

    let defaults = Arc::new(defaults);
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listen = %bound, "jwtgate inject serving");
    crate::proxy::listener::serve(
        "inject",
        listener,
        crate::proxy::listener::ConnLimits::internal(Duration::from_secs(10)),
        move |tcp| acceptor.accept(tcp),
        move |_peer| {
            let defaults = defaults.clone();
            hyper::service::service_fn(move |req| {
                let defaults = defaults.clone();
                async move { Ok::<_, Infallible>(route(req, &defaults).await) }
            })
        },
        shutdown,
        Duration::from_secs(5),
    )
    .await;
    reload.abort();
    Ok(())
}

async fn route(req: Request<Incoming>, defaults: &Defaults) -> Response<Full<Bytes>> {
    let mode = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return plain(StatusCode::OK, "ok\n"),
        (&Method::POST, "/mutate/namespace-enabled") => Mode::NamespaceEnabled,
        (&Method::POST, "/mutate/pod-opt-in") => Mode::PodOptIn,
        _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "AdmissionReview too large\n"),
    };
    let answer = review(&body, mode, defaults);
    match serde_json::to_value(&answer)
        .map(base64_patch)
        .and_then(|v| serde_json::to_vec(&v))
    {
        Ok(json) => {
            let mut r = Response::new(Full::new(Bytes::from(json)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the answer\n",
        ),
    }
}

/// kube-core serialises `response.patch` (bytes) as an array of numbers; the documented
/// AdmissionReview wire format is a base64 string, which is what is sent.
fn base64_patch(mut review: serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    if let Some(patch) = review.pointer_mut("/response/patch")
        && let Some(bytes) = patch.as_array().map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Vec<u8>>()
        })
    {
        *patch = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    review
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// Binds `listen` and checks the certificate before anything is served.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("--listen {listen}: {e}"))
}
