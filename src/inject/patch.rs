//! The pure part of the injector: Pod in, decision out (skip, JSON patch, or deny with a
//! message naming the annotation). No I/O, so every rule is a unit test.
//!
//! Opt-in (the webhook configuration routes each case to its own path):
//!
//! | namespace label `jwtgate.io/inject` | pod label `jwtgate.io/inject` | result |
//! |---|---|---|
//! | `enabled` | absent or anything but `"false"` | injected |
//! | `enabled` | `"false"` | untouched |
//! | absent (or any value but `enabled`/`disabled`) | `"true"` | injected |
//! | absent | absent or other | untouched |
//! | `disabled` | anything | untouched (not routed to the webhook) |
//!
//! An opted-in pod that jwtgate cannot serve is let through without the sidecar and marked
//! `jwtgate.io/status: skipped` with `jwtgate.io/skip-reason`: a pod owned by a Job (a
//! sidecar that never exits would keep it from completing), a `restartPolicy` other than
//! `Always` (the same), or no container port at all and no `jwtgate.io/upstream-port`
//! (nothing to serve). Any other opted-in pod without an upstream port is refused: a
//! gateway pod never runs without its sidecar.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, Pod, Probe, ResourceRequirements, SeccompProfile, SecretEnvSource,
    SecretKeySelector, SecurityContext, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

pub const LABEL: &str = "jwtgate.io/inject";
pub const STATUS: &str = "jwtgate.io/status";
pub const SKIP_REASON: &str = "jwtgate.io/skip-reason";
/// Label on every pod carrying the sidecar: what the PodMonitor selects.
pub const SIDECAR_LABEL: &str = "jwtgate.io/sidecar";
pub const CONTAINER: &str = "jwtgate";
const CONFIG_VOLUME: &str = "jwtgate-config";
const STATE_VOLUME: &str = "jwtgate-state";
const ADMIN_TLS_VOLUME: &str = "jwtgate-admin-tls";
const ADMIN_TLS_DIR: &str = "/etc/jwtgate/admin-tls";
const CONFIG_DIR: &str = "/etc/jwtgate";
const STATE_DIR: &str = "/var/lib/jwtgate";

/// Which webhook path the request came in on (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The namespace is labelled `jwtgate.io/inject=enabled`.
    NamespaceEnabled,
    /// The namespace is not labelled; only pods labelled `"true"` are injected.
    PodOptIn,
}

/// Injector defaults (`jwtgate inject --config FILE`), overridable per pod by annotations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub image: String,
    pub config_map: String,
    pub port: u16,
    pub admin_port: u16,
    /// The app's port on localhost, when the pod does not say (`jwtgate.io/upstream-port`).
    pub upstream_port: Option<u16>,
    pub cpu_request: String,
    pub cpu_limit: Option<String>,
    pub memory_request: String,
    pub memory_limit: Option<String>,
    pub native_sidecar: bool,
    /// Secret holding the revocation push token (key `token`), exposed as
    /// `JWTGATE_PUSH_TOKEN`; optional in the pod.
    pub push_token_secret: String,
    /// Secrets and ConfigMaps whose keys become the sidecar's environment (`envFrom`): what
    /// the config's `${VAR}`s need. Annotations `jwtgate.io/env-from-secret` and
    /// `jwtgate.io/env-from-configmap` (comma-separated names) add more per pod.
    pub env_from_secrets: Vec<String>,
    pub env_from_config_maps: Vec<String>,
    /// The sidecar config's `server.shutdown_delay_s` and `drain_timeout_s` (keep them equal
    /// to the ConfigMap's): the pod's `terminationGracePeriodSeconds` is raised to their sum
    /// + 5 s when lower, and the app's preStop holds it `shutdown_delay_s` + 5 s.
    pub shutdown_delay_s: u32,
    pub drain_timeout_s: u32,
    /// How the app container is kept alive while jwtgate stops taking traffic: `sleep` (the
    /// preStop sleep action, Kubernetes ≥ 1.30), `exec` (`sleep N` in the app's image) or
    /// `none`; annotation `jwtgate.io/app-prestop`. A preStop the app already has is kept.
    pub app_prestop: String,
    /// Revocation records a pod should be ready to hold (annotation
    /// `jwtgate.io/expected-revocations`): the snapshot `emptyDir` is sized
    /// 2 × records × 32 B + 16 Mi (two snapshots, the file and its temp copy, at a generous
    /// 32 B a record; the file takes 12).
    pub expected_revocations: u64,
    /// A `kubernetes.io/tls` Secret (e.g. from cert-manager) for HTTPS on the admin port
    /// (annotation `jwtgate.io/admin-tls-secret`): mounted, passed as `--admin-tls-cert` /
    /// `--admin-tls-key`, and the probes and scrape annotations switched to HTTPS. Push
    /// tokens then never cross the pod network in clear.
    pub admin_tls_secret: Option<String>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image: concat!("ghcr.io/jwtgate/jwtgate:", env!("CARGO_PKG_VERSION")).into(),
            config_map: "jwtgate".into(),
            port: 8080,
            admin_port: 9901,
            upstream_port: None,
            cpu_request: "50m".into(),
            cpu_limit: None,
            memory_request: "80Mi".into(),
            memory_limit: Some("128Mi".into()),
            native_sidecar: false,
            push_token_secret: "jwtgate-push".into(),
            env_from_secrets: Vec::new(),
            env_from_config_maps: Vec::new(),
            shutdown_delay_s: 5,
            drain_timeout_s: 30,
            app_prestop: "sleep".into(),
            expected_revocations: 1_000_000,
            admin_tls_secret: None,
        }
    }
}

/// What the webhook answers.
#[derive(Debug)]
pub enum Decision {
    /// Allowed unchanged, with the reason (for the log).
    Skip(&'static str),
    /// Allowed with this patch.
    Patch(json_patch::Patch),
    /// Refused: a clear message naming the annotation.
    Deny(String),
    /// Allowed without the sidecar, marked `jwtgate.io/status: skipped` with the reason.
    Marked(json_patch::Patch),
}

/// The per-pod settings after annotations are applied.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    image: String,
    config_map: String,
    port: u16,
    admin_port: u16,
    upstream_port: u16,
    cpu_request: String,
    cpu_limit: Option<String>,
    memory_request: String,
    memory_limit: Option<String>,
    native_sidecar: bool,
    env_from_secrets: Vec<String>,
    env_from_config_maps: Vec<String>,
    app_prestop: AppPreStop,
    /// `--threads`: the CPU request rounded up, at least 1.
    threads: u32,
    expected_revocations: u64,
    admin_tls_secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AppPreStop {
    Sleep,
    Exec,
    None,
}

pub fn decide(pod: &Pod, mode: Mode, defaults: &Defaults) -> Decision {
    let labels = pod.metadata.labels.as_ref();
    let label = labels.and_then(|l| l.get(LABEL)).map(String::as_str);
    if label == Some("false") {
        return Decision::Skip("pod opted out (jwtgate.io/inject: \"false\")");
    }
    if mode == Mode::PodOptIn && label != Some("true") {
        return Decision::Skip("pod not opted in and namespace not enabled");
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(STATUS).map(String::as_str) == Some("injected") || has_jwtgate(pod) {
        return Decision::Skip("already injected");
    }
    if let Some(reason) = cannot_serve(pod, &annotations) {
        let mut marked = pod.clone();
        let a = marked
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        a.insert(STATUS.into(), "skipped".into());
        a.insert(SKIP_REASON.into(), reason);
        return match diff(pod, &marked) {
            Some(patch) => Decision::Marked(patch),
            None => Decision::Deny("jwtgate: the pod could not be serialised".into()),
        };
    }
    let settings = match settings(&annotations, defaults) {
        Ok(s) => s,
        Err(message) => return Decision::Deny(message),
    };
    if let Some(conflict) = port_conflict(pod, &settings) {
        return Decision::Deny(conflict);
    }
    let patched = inject(pod.clone(), &settings, defaults);
    match diff(pod, &patched) {
        Some(patch) => Decision::Patch(patch),
        None => Decision::Deny("jwtgate: the pod could not be serialised".into()),
    }
}

fn diff(before: &Pod, after: &Pod) -> Option<json_patch::Patch> {
    let (Ok(before), Ok(after)) = (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return None;
    };
    Some(json_patch::diff(&before, &after))
}

/// Why jwtgate cannot serve this pod, if it cannot (see the module docs).
fn cannot_serve(pod: &Pod, annotations: &BTreeMap<String, String>) -> Option<String> {
    let owners = pod.metadata.owner_references.iter().flatten();
    if let Some(job) = owners.into_iter().find(|o| o.kind == "Job") {
        return Some(format!(
            "owned by Job {}: a sidecar would keep it from completing",
            job.name
        ));
    }
    let spec = pod.spec.as_ref()?;
    if let Some(policy) = spec.restart_policy.as_deref().filter(|p| *p != "Always") {
        return Some(format!(
            "restartPolicy {policy}: a sidecar would keep the pod from completing"
        ));
    }
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten());
    if ports.count() == 0 && !annotations.contains_key("jwtgate.io/upstream-port") {
        return Some("no container port and no jwtgate.io/upstream-port: nothing to serve".into());
    }
    None
}

fn has_jwtgate(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == CONTAINER)
}

fn settings(a: &BTreeMap<String, String>, d: &Defaults) -> Result<Settings, String> {
    let port = |key: &str, default: Option<u16>| -> Result<u16, String> {
        match a.get(key) {
            Some(v) => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("annotation {key}: {v:?} is not a port (1-65535)")),
            None => default.ok_or_else(|| {
                format!("annotation {key} is required: the app's port on localhost")
            }),
        }
    };
    let quantity = |key: &str, default: Option<&String>| -> Result<Option<String>, String> {
        match a.get(key) {
            Some(v) if is_quantity(v.trim()) => Ok(Some(v.trim().to_owned())),
            Some(v) => Err(format!(
                "annotation {key}: {v:?} is not a Kubernetes quantity (e.g. 100m, 64Mi)"
            )),
            None => Ok(default.cloned()),
        }
    };
    let native_sidecar = match a.get("jwtgate.io/native-sidecar").map(|v| v.trim()) {
        None => d.native_sidecar,
        Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(format!(
                "annotation jwtgate.io/native-sidecar: {v:?} must be \"true\" or \"false\""
            ));
        }
    };
    let image = match a.get("jwtgate.io/image") {
        Some(v) if !v.trim().is_empty() && !v.chars().any(char::is_whitespace) => {
            v.trim().to_owned()
        }
        Some(v) => {
            return Err(format!(
                "annotation jwtgate.io/image: {v:?} is not an image reference"
            ));
        }
        None => d.image.clone(),
    };
    let config_map = match a.get("jwtgate.io/config") {
        Some(v) if is_dns_label(v.trim()) => v.trim().to_owned(),
        Some(v) => {
            return Err(format!(
                "annotation jwtgate.io/config: {v:?} is not a ConfigMap name (DNS-1123 subdomain)"
            ));
        }
        None => d.config_map.clone(),
    };
    let cpu_request = quantity("jwtgate.io/cpu-request", Some(&d.cpu_request))?.unwrap_or_default();
    Ok(Settings {
        threads: whole_cpus(&cpu_request),
        env_from_secrets: names(a, "jwtgate.io/env-from-secret", &d.env_from_secrets)?,
        env_from_config_maps: names(a, "jwtgate.io/env-from-configmap", &d.env_from_config_maps)?,
        app_prestop: app_prestop(a, d)?,
        admin_tls_secret: admin_tls_secret(a, d)?,
        expected_revocations: expected_revocations(a, d)?,
        image,
        config_map,
        port: port("jwtgate.io/port", Some(d.port))?,
        admin_port: port("jwtgate.io/admin-port", Some(d.admin_port))?,
        upstream_port: port("jwtgate.io/upstream-port", d.upstream_port)?,
        cpu_request,
        cpu_limit: quantity("jwtgate.io/cpu-limit", d.cpu_limit.as_ref())?,
        memory_request: quantity("jwtgate.io/memory-request", Some(&d.memory_request))?
            .unwrap_or_default(),
        memory_limit: quantity("jwtgate.io/memory-limit", d.memory_limit.as_ref())?,
        native_sidecar,
    })
}

/// The injector's names for `key` plus the annotation's (comma-separated), each once.
fn names(
    a: &BTreeMap<String, String>,
    key: &str,
    defaults: &[String],
) -> Result<Vec<String>, String> {
    let mut all = defaults.to_vec();
    for name in a.get(key).iter().flat_map(|v| v.split(',')).map(str::trim) {
        if !is_dns_label(name) {
            return Err(format!(
                "annotation {key}: {name:?} is not a resource name (DNS-1123 subdomain)"
            ));
        }
        if !all.iter().any(|n| n == name) {
            all.push(name.to_owned());
        }
    }
    Ok(all)
}

fn admin_tls_secret(a: &BTreeMap<String, String>, d: &Defaults) -> Result<Option<String>, String> {
    match a.get("jwtgate.io/admin-tls-secret").map(|v| v.trim()) {
        None => Ok(d.admin_tls_secret.clone()),
        Some(v) if is_dns_label(v) => Ok(Some(v.to_owned())),
        Some(v) => Err(format!(
            "annotation jwtgate.io/admin-tls-secret: {v:?} is not a Secret name (DNS-1123 subdomain)"
        )),
    }
}

fn expected_revocations(a: &BTreeMap<String, String>, d: &Defaults) -> Result<u64, String> {
    match a.get("jwtgate.io/expected-revocations") {
        None => Ok(d.expected_revocations),
        Some(v) => v.trim().parse::<u64>().ok().filter(|n| *n <= 1 << 32).ok_or_else(|| {
            format!(
                "annotation jwtgate.io/expected-revocations: {v:?} is not a record count (0 to 4294967296)"
            )
        }),
    }
}

fn app_prestop(a: &BTreeMap<String, String>, d: &Defaults) -> Result<AppPreStop, String> {
    match a
        .get("jwtgate.io/app-prestop")
        .unwrap_or(&d.app_prestop)
        .trim()
    {
        "sleep" => Ok(AppPreStop::Sleep),
        "exec" => Ok(AppPreStop::Exec),
        "none" => Ok(AppPreStop::None),
        v => Err(format!(
            "annotation jwtgate.io/app-prestop: {v:?} must be \"sleep\", \"exec\" or \"none\""
        )),
    }
}

fn port_conflict(pod: &Pod, s: &Settings) -> Option<String> {
    if s.port == s.admin_port {
        return Some("annotations jwtgate.io/port and jwtgate.io/admin-port must differ".into());
    }
    for (key, p) in [
        ("jwtgate.io/port", s.port),
        ("jwtgate.io/admin-port", s.admin_port),
    ] {
        if p == s.upstream_port {
            return Some(format!(
                "annotation {key}: {p} is also jwtgate.io/upstream-port (the app's port)"
            ));
        }
        let taken = pod.spec.iter().flat_map(|spec| {
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .flat_map(|c| c.ports.iter().flatten())
        });
        for cp in taken {
            if cp.container_port == i32::from(p) {
                return Some(format!(
                    "annotation {key}: port {p} is already used by a container of the pod"
                ));
            }
        }
    }
    None
}

/// A Kubernetes resource quantity: digits with an optional fraction and suffix.
fn is_quantity(v: &str) -> bool {
    const SUFFIXES: [&str; 13] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E",
    ];
    let num = SUFFIXES.iter().find_map(|s| v.strip_suffix(s)).unwrap_or(v);
    let mut parts = num.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// The snapshot volume: 2 × records × 32 B + 16 Mi, in whole Mi.
fn snapshot_size_limit(records: u64) -> String {
    const MI: u64 = 1 << 20;
    format!("{}Mi", (2 * records * 32).div_ceil(MI) + 16)
}

/// A CPU quantity rounded up to whole CPUs, at least 1 (`50m` → 1, `1500m` → 2, `2` → 2):
/// the runtime's thread count, instead of one per node core.
fn whole_cpus(q: &str) -> u32 {
    let (num, milli) = match q.strip_suffix('m') {
        Some(n) => (n, true),
        None => (q, false),
    };
    let Ok(v) = num.parse::<f64>() else { return 1 };
    let cpus = if milli { v / 1000.0 } else { v };
    (cpus.ceil() as u32).clamp(1, 64)
}

pub(crate) fn is_dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn inject(mut pod: Pod, s: &Settings, d: &Defaults) -> Pod {
    let container = sidecar(s, d);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SIDECAR_LABEL.into(), "injected".into());
    if s.admin_tls_secret.is_some() {
        // The HTTPS PodMonitor (deploy/monitoring) selects these; the plain one skips them.
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert("jwtgate.io/admin-scheme".into(), "https".into());
    }
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(STATUS.into(), "injected".into());
    // The PodMonitor finds jwtgate by its label. Annotation-based scraping gets jwtgate's
    // metrics only when the app has no prometheus.io/* of its own: those stay the app's.
    if !annotations.keys().any(|k| k.starts_with("prometheus.io/")) {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), s.admin_port.to_string());
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
        if s.admin_tls_secret.is_some() {
            annotations.insert("prometheus.io/scheme".into(), "https".into());
        }
    }
    let spec = pod.spec.get_or_insert_with(Default::default);
    // Stop order: jwtgate keeps serving for shutdown_delay_s while endpoints drop the pod,
    // then drains for up to drain_timeout_s; the grace period covers both, and the app
    // outlives the delay so nothing jwtgate still forwards finds it gone.
    let needed = i64::from(d.shutdown_delay_s) + i64::from(d.drain_timeout_s) + 5;
    if spec.termination_grace_period_seconds.unwrap_or(30) < needed {
        spec.termination_grace_period_seconds = Some(needed);
    }
    hold_app(spec, s, i64::from(d.shutdown_delay_s) + 5);
    if s.native_sidecar {
        let mut c = container;
        c.restart_policy = Some("Always".into());
        spec.init_containers.get_or_insert_with(Vec::new).push(c);
    } else {
        spec.containers.push(container);
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: s.config_map.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
    if let Some(secret) = &s.admin_tls_secret {
        volumes.push(Volume {
            name: ADMIN_TLS_VOLUME.into(),
            secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes.push(Volume {
        name: STATE_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(snapshot_size_limit(s.expected_revocations))),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

/// Gives the app container (the one listening on the upstream port, else the first) a
/// preStop that outlasts jwtgate's shutdown delay, unless it has one or the pod opted out.
fn hold_app(spec: &mut k8s_openapi::api::core::v1::PodSpec, s: &Settings, seconds: i64) {
    let upstream = i32::from(s.upstream_port);
    let serves = |c: &Container| {
        c.ports
            .iter()
            .flatten()
            .any(|p| p.container_port == upstream)
    };
    let Some(i) = spec.containers.iter().position(serves).or(
        // The first container, unless that is jwtgate itself.
        (spec.containers.first().is_some_and(|c| c.name != CONTAINER)).then_some(0),
    ) else {
        return;
    };
    let app = &mut spec.containers[i];
    if app.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()) {
        return;
    }
    let handler = match s.app_prestop {
        AppPreStop::None => return,
        AppPreStop::Sleep => LifecycleHandler {
            sleep: Some(SleepAction { seconds }),
            ..Default::default()
        },
        AppPreStop::Exec => LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["sleep".into(), seconds.to_string()]),
            }),
            ..Default::default()
        },
    };
    app.lifecycle
        .get_or_insert_with(Lifecycle::default)
        .pre_stop = Some(handler);
}

// long-function: the injected container spec, field by field, reads best as one
// literal next to its documentation in README "Sidecar injection".
fn sidecar(s: &Settings, d: &Defaults) -> Container {
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("jwtgate-admin".into()),
            scheme: s.admin_tls_secret.as_ref().map(|_| "HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let mut requests = BTreeMap::new();
    requests.insert("cpu".to_owned(), Quantity(s.cpu_request.clone()));
    requests.insert("memory".to_owned(), Quantity(s.memory_request.clone()));
    let mut limits = BTreeMap::new();
    if let Some(c) = &s.cpu_limit {
        limits.insert("cpu".to_owned(), Quantity(c.clone()));
    }
    if let Some(m) = &s.memory_limit {
        limits.insert("memory".to_owned(), Quantity(m.clone()));
    }
    let mut mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: STATE_VOLUME.into(),
            mount_path: STATE_DIR.into(),
            ..Default::default()
        },
    ];
    let mut admin_tls_args = Vec::new();
    if s.admin_tls_secret.is_some() {
        mounts.push(VolumeMount {
            name: ADMIN_TLS_VOLUME.into(),
            mount_path: ADMIN_TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        admin_tls_args = vec![
            "--admin-tls-cert".to_owned(),
            format!("{ADMIN_TLS_DIR}/tls.crt"),
            "--admin-tls-key".to_owned(),
            format!("{ADMIN_TLS_DIR}/tls.key"),
        ];
    }
    let mut args = vec![
        "serve".into(),
        "--config".into(),
        format!("{CONFIG_DIR}/jwtgate.toml"),
        "--listen".into(),
        format!("0.0.0.0:{}", s.port),
        "--admin-listen".into(),
        format!("0.0.0.0:{}", s.admin_port),
        "--upstream".into(),
        format!("http://127.0.0.1:{}", s.upstream_port),
        // A ConfigMap edit reaches the running sidecar (the kubelet swaps the mounted
        // file's symlink; the content hash sees it).
        "--watch".into(),
        // Threads from the CPU request, not one per node core.
        "--threads".into(),
        s.threads.to_string(),
    ];
    args.extend(admin_tls_args);
    Container {
        name: CONTAINER.into(),
        image: Some(s.image.clone()),
        args: Some(args),
        ports: Some(vec![
            ContainerPort {
                name: Some("jwtgate".into()),
                container_port: i32::from(s.port),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("jwtgate-admin".into()),
                container_port: i32::from(s.admin_port),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env: Some(vec![EnvVar {
            name: "JWTGATE_PUSH_TOKEN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: d.push_token_secret.clone(),
                    key: "token".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        env_from: env_from(s),
        readiness_probe: Some(probe("/readyz", 2)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn env_from(s: &Settings) -> Option<Vec<EnvFromSource>> {
    let secrets = s.env_from_secrets.iter().map(|name| EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: name.clone(),
            optional: Some(false),
        }),
        ..Default::default()
    });
    let maps = s.env_from_config_maps.iter().map(|name| EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: name.clone(),
            optional: Some(false),
        }),
        ..Default::default()
    });
    let all: Vec<EnvFromSource> = secrets.chain(maps).collect();
    (!all.is_empty()).then_some(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "gw", "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "wso2/gateway", "ports": [{"containerPort": 8243}]}]}
        }))
        .unwrap()
    }

    fn apply(p: &Pod, patch: &json_patch::Patch) -> Pod {
        let mut v = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut v, patch).unwrap();
        serde_json::from_value(v).unwrap()
    }

    fn up() -> serde_json::Value {
        json!({"jwtgate.io/upstream-port": "8243"})
    }

    #[test]
    fn truth_table() {
        let d = Defaults::default();
        let cases = [
            (Mode::NamespaceEnabled, json!({}), true),
            (Mode::NamespaceEnabled, json!({LABEL: "true"}), true),
            (Mode::NamespaceEnabled, json!({LABEL: "false"}), false),
            (Mode::PodOptIn, json!({LABEL: "true"}), true),
            (Mode::PodOptIn, json!({}), false),
            (Mode::PodOptIn, json!({LABEL: "yes"}), false),
            (Mode::PodOptIn, json!({LABEL: "false"}), false),
        ];
        for (mode, labels, injected) in cases {
            let d2 = decide(&pod(labels.clone(), up()), mode, &d);
            assert_eq!(
                matches!(d2, Decision::Patch(_)),
                injected,
                "{mode:?} {labels}: {d2:?}"
            );
        }
    }

    #[test]
    fn sidecar_is_hardened_and_wired_by_flags() {
        let p = pod(
            json!({}),
            json!({"jwtgate.io/upstream-port": "8243", "jwtgate.io/port": "8443"}),
        );
        let Decision::Patch(patch) = decide(&p, Mode::NamespaceEnabled, &Defaults::default())
        else {
            panic!("no patch")
        };
        let out = apply(&p, &patch);
        let ann = out.metadata.annotations.unwrap();
        assert_eq!(ann[STATUS], "injected");
        assert_eq!(ann["prometheus.io/port"], "9901");
        assert_eq!(out.metadata.labels.unwrap()[SIDECAR_LABEL], "injected");
        let spec = out.spec.unwrap();
        let c = spec
            .containers
            .iter()
            .find(|c| c.name == CONTAINER)
            .unwrap();
        let args = c.args.clone().unwrap().join(" ");
        assert!(args.contains("--listen 0.0.0.0:8443"), "{args}");
        assert!(args.contains("--upstream http://127.0.0.1:8243"), "{args}");
        assert!(
            args.contains("--watch"),
            "a ConfigMap edit reaches the sidecar: {args}"
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), vec!["ALL"]);
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        assert_eq!(spec.volumes.unwrap().len(), 2);
        // Idempotent: the patched pod is left alone.
        let again = apply(&p, &patch);
        assert!(matches!(
            decide(&again, Mode::NamespaceEnabled, &Defaults::default()),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn native_sidecar_is_an_always_restarting_init_container() {
        let mut a = up();
        a["jwtgate.io/native-sidecar"] = "true".into();
        let p = pod(json!({}), a);
        let Decision::Patch(patch) = decide(&p, Mode::NamespaceEnabled, &Defaults::default())
        else {
            panic!()
        };
        let spec = apply(&p, &patch).spec.unwrap();
        assert_eq!(spec.containers.len(), 1);
        let init = spec.init_containers.unwrap();
        assert_eq!(init[0].name, CONTAINER);
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn bad_annotations_are_denied_by_name() {
        let d = Defaults::default();
        for (key, value) in [
            ("jwtgate.io/port", "http"),
            ("jwtgate.io/admin-port", "70000"),
            ("jwtgate.io/upstream-port", "0"),
            ("jwtgate.io/memory-limit", "lots"),
            ("jwtgate.io/native-sidecar", "maybe"),
            ("jwtgate.io/config", "Not_A_Name"),
        ] {
            let mut a = up();
            a[key] = value.into();
            match decide(&pod(json!({}), a), Mode::NamespaceEnabled, &d) {
                Decision::Deny(m) => assert!(m.contains(key), "{m}"),
                other => panic!("{key}={value}: {other:?}"),
            }
        }
        match decide(&pod(json!({}), json!({})), Mode::NamespaceEnabled, &d) {
            Decision::Deny(m) => assert!(m.contains("jwtgate.io/upstream-port"), "{m}"),
            other => panic!("{other:?}"),
        }
        let clash = json!({"jwtgate.io/upstream-port": "8243", "jwtgate.io/port": "8243"});
        assert!(matches!(
            decide(&pod(json!({}), clash), Mode::NamespaceEnabled, &d),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "64Mi", "1", "0.5", "2Gi", "1.5G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "lots", "1.", ".5", "5 Mi", "-1", "Mi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    /// The patched pod for these annotations and pod fields (merged into the default pod).
    fn injected(annotations: serde_json::Value, spec: serde_json::Value, d: &Defaults) -> Pod {
        let mut v = serde_json::to_value(pod(json!({}), annotations)).unwrap();
        json_patch::merge(&mut v["spec"], &spec);
        let p: Pod = serde_json::from_value(v).unwrap();
        match decide(&p, Mode::NamespaceEnabled, d) {
            Decision::Patch(patch) => apply(&p, &patch),
            other => panic!("{other:?}"),
        }
    }

    fn container<'a>(p: &'a Pod, name: &str) -> &'a Container {
        let spec = p.spec.as_ref().unwrap();
        spec.containers.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn pods_jwtgate_cannot_serve_are_let_through_marked_and_gateways_never_are() {
        let d = Defaults::default();
        let job = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "migrate-x", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "migrate", "uid": "u1"}]},
            "spec": {"containers": [{"name": "m", "image": "busybox", "ports": [{"containerPort": 8080}]}]}});
        let never = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "d", "image": "busybox", "ports": [{"containerPort": 80}]}]}});
        let portless = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"},
            "spec": {"containers": [{"name": "w", "image": "busybox"}]}});
        for (pod, reason) in [
            (job, "Job migrate"),
            (never, "restartPolicy Never"),
            (portless, "no container port"),
        ] {
            let p: Pod = serde_json::from_value(pod).unwrap();
            let Decision::Marked(patch) = decide(&p, Mode::NamespaceEnabled, &d) else {
                panic!("{reason}: not marked")
            };
            let out = apply(&p, &patch);
            let a = out.metadata.annotations.unwrap();
            assert_eq!(a[STATUS], "skipped");
            assert!(a[SKIP_REASON].contains(reason), "{}", a[SKIP_REASON]);
            assert_eq!(
                out.spec.unwrap().containers.len(),
                1,
                "{reason}: no sidecar"
            );
        }
        // A pod with ports and no upstream port is a gateway missing its setting: refused.
        assert!(matches!(
            decide(&pod(json!({}), json!({})), Mode::NamespaceEnabled, &d),
            Decision::Deny(_)
        ));
        // Portless but told where the app listens: injected.
        let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "w", "annotations": {"jwtgate.io/upstream-port": "8081"}},
            "spec": {"containers": [{"name": "w", "image": "busybox"}]}}))
        .unwrap();
        assert!(matches!(
            decide(&p, Mode::NamespaceEnabled, &d),
            Decision::Patch(_)
        ));
    }

    #[test]
    fn environment_comes_from_defaults_and_annotations() {
        let d = Defaults {
            env_from_secrets: vec!["wso2-cp".into()],
            ..Defaults::default()
        };
        let mut a = up();
        a["jwtgate.io/env-from-secret"] = " km-creds , wso2-cp".into();
        a["jwtgate.io/env-from-configmap"] = "gw-env".into();
        let out = injected(a, json!({}), &d);
        let env_from = container(&out, CONTAINER).env_from.clone().unwrap();
        let names: Vec<String> = env_from
            .iter()
            .map(|e| match (&e.secret_ref, &e.config_map_ref) {
                (Some(s), None) => format!("secret/{}", s.name),
                (None, Some(c)) => format!("configmap/{}", c.name),
                _ => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(
            names,
            ["secret/wso2-cp", "secret/km-creds", "configmap/gw-env"]
        );
        let mut a = up();
        a["jwtgate.io/env-from-secret"] = "ok,Not_OK".into();
        match decide(&pod(json!({}), a), Mode::NamespaceEnabled, &d) {
            Decision::Deny(m) => assert!(
                m.contains("jwtgate.io/env-from-secret") && m.contains("Not_OK"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_apps_prometheus_annotations_stay_the_apps() {
        let mut a = up();
        a["prometheus.io/scrape"] = "true".into();
        a["prometheus.io/port"] = "8080".into();
        let out = injected(a, json!({}), &Defaults::default());
        let ann = out.metadata.annotations.unwrap();
        assert_eq!(ann["prometheus.io/port"], "8080");
        assert!(!ann.contains_key("prometheus.io/path"));
        // Without any, jwtgate's admin port is announced.
        let ann = injected(up(), json!({}), &Defaults::default())
            .metadata
            .annotations
            .unwrap();
        assert_eq!(ann["prometheus.io/port"], "9901");
    }

    #[test]
    fn shutdown_is_ordered_grace_and_app_prestop() {
        let d = Defaults::default();
        let out = injected(up(), json!({}), &d);
        let spec = out.spec.clone().unwrap();
        assert_eq!(spec.termination_grace_period_seconds, Some(5 + 30 + 5));
        let pre = container(&out, "app")
            .lifecycle
            .clone()
            .unwrap()
            .pre_stop
            .unwrap();
        assert_eq!(pre.sleep.unwrap().seconds, 10);
        // A longer grace period and the app's own preStop are kept.
        let own = json!({"terminationGracePeriodSeconds": 120,
            "containers": [{"name": "app", "image": "wso2/gateway", "ports": [{"containerPort": 8243}],
                "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": 8243}}}}]});
        let out = injected(up(), own, &d);
        assert_eq!(
            out.spec.clone().unwrap().termination_grace_period_seconds,
            Some(120)
        );
        let pre = container(&out, "app")
            .lifecycle
            .clone()
            .unwrap()
            .pre_stop
            .unwrap();
        assert!(pre.http_get.is_some() && pre.sleep.is_none());
        // exec (older clusters) and none.
        let mut a = up();
        a["jwtgate.io/app-prestop"] = "exec".into();
        let out = injected(a, json!({}), &d);
        let pre = container(&out, "app")
            .lifecycle
            .clone()
            .unwrap()
            .pre_stop
            .unwrap();
        assert_eq!(pre.exec.unwrap().command.unwrap(), ["sleep", "10"]);
        let mut a = up();
        a["jwtgate.io/app-prestop"] = "none".into();
        assert!(
            container(&injected(a, json!({}), &d), "app")
                .lifecycle
                .is_none()
        );
        let mut a = up();
        a["jwtgate.io/app-prestop"] = "later".into();
        assert!(
            matches!(decide(&pod(json!({}), a), Mode::NamespaceEnabled, &d), Decision::Deny(m) if m.contains("jwtgate.io/app-prestop"))
        );
    }

    #[test]
    fn threads_follow_the_cpu_request() {
        for (request, threads) in [
            ("50m", "1"),
            ("1", "1"),
            ("1500m", "2"),
            ("2", "2"),
            ("0.5", "1"),
        ] {
            let mut a = up();
            a["jwtgate.io/cpu-request"] = request.into();
            let out = injected(a, json!({}), &Defaults::default());
            let args = container(&out, CONTAINER).args.clone().unwrap();
            let at = args.iter().position(|a| a == "--threads").unwrap();
            assert_eq!(args[at + 1], threads, "{request}");
        }
    }

    #[test]
    fn the_snapshot_volume_is_sized_from_the_expected_records() {
        assert_eq!(snapshot_size_limit(0), "16Mi");
        assert_eq!(snapshot_size_limit(1_000_000), "78Mi");
        let mut a = up();
        a["jwtgate.io/expected-revocations"] = "5000000".into();
        let out = injected(a, json!({}), &Defaults::default());
        let volumes = out.spec.unwrap().volumes.unwrap();
        let state = volumes.iter().find(|v| v.name == STATE_VOLUME).unwrap();
        assert_eq!(
            state.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("322Mi".into()))
        );
        let mut a = up();
        a["jwtgate.io/expected-revocations"] = "lots".into();
        assert!(
            matches!(decide(&pod(json!({}), a), Mode::NamespaceEnabled, &Defaults::default()), Decision::Deny(m) if m.contains("jwtgate.io/expected-revocations"))
        );
    }

    #[test]
    fn admin_tls_mounts_the_secret_and_switches_probes_and_scrapes_to_https() {
        let mut a = up();
        a["jwtgate.io/admin-tls-secret"] = "gw-admin-tls".into();
        let out = injected(a, json!({}), &Defaults::default());
        let c = container(&out, CONTAINER);
        let args = c.args.clone().unwrap().join(" ");
        assert!(
            args.contains("--admin-tls-cert /etc/jwtgate/admin-tls/tls.crt"),
            "{args}"
        );
        assert!(
            args.contains("--admin-tls-key /etc/jwtgate/admin-tls/tls.key"),
            "{args}"
        );
        for probe in [&c.readiness_probe, &c.liveness_probe] {
            let get = probe.clone().unwrap().http_get.unwrap();
            assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        }
        assert!(
            c.volume_mounts
                .clone()
                .unwrap()
                .iter()
                .any(|m| m.name == ADMIN_TLS_VOLUME && m.read_only == Some(true))
        );
        let spec = out.spec.clone().unwrap();
        let v = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == ADMIN_TLS_VOLUME)
            .unwrap();
        assert_eq!(
            v.secret.unwrap().secret_name.as_deref(),
            Some("gw-admin-tls")
        );
        assert_eq!(
            out.metadata.annotations.unwrap()["prometheus.io/scheme"],
            "https"
        );
        // Without it: plain HTTP probes (no scheme), no mount.
        let plain = injected(up(), json!({}), &Defaults::default());
        let c = container(&plain, CONTAINER);
        assert_eq!(
            c.readiness_probe.clone().unwrap().http_get.unwrap().scheme,
            None
        );
        assert!(
            !c.args
                .clone()
                .unwrap()
                .iter()
                .any(|a| a.starts_with("--admin-tls"))
        );
    }
}
