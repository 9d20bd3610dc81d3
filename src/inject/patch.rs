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

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, Pod, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

pub const LABEL: &str = "jwtgate.io/inject";
pub const STATUS: &str = "jwtgate.io/status";
/// Label on every pod carrying the sidecar: what the PodMonitor selects.
pub const SIDECAR_LABEL: &str = "jwtgate.io/sidecar";
pub const CONTAINER: &str = "jwtgate";
const CONFIG_VOLUME: &str = "jwtgate-config";
const STATE_VOLUME: &str = "jwtgate-state";
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
            memory_request: "32Mi".into(),
            memory_limit: Some("128Mi".into()),
            native_sidecar: false,
            push_token_secret: "jwtgate-push".into(),
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
    let settings = match settings(&annotations, defaults) {
        Ok(s) => s,
        Err(message) => return Decision::Deny(message),
    };
    if let Some(conflict) = port_conflict(pod, &settings) {
        return Decision::Deny(conflict);
    }
    let patched = inject(pod.clone(), &settings, defaults);
    let (Ok(before), Ok(after)) = (serde_json::to_value(pod), serde_json::to_value(&patched))
    else {
        return Decision::Deny("jwtgate: the pod could not be serialised".into());
    };
    Decision::Patch(json_patch::diff(&before, &after))
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
    Ok(Settings {
        image,
        config_map,
        port: port("jwtgate.io/port", Some(d.port))?,
        admin_port: port("jwtgate.io/admin-port", Some(d.admin_port))?,
        upstream_port: port("jwtgate.io/upstream-port", d.upstream_port)?,
        cpu_request: quantity("jwtgate.io/cpu-request", Some(&d.cpu_request))?.unwrap_or_default(),
        cpu_limit: quantity("jwtgate.io/cpu-limit", d.cpu_limit.as_ref())?,
        memory_request: quantity("jwtgate.io/memory-request", Some(&d.memory_request))?
            .unwrap_or_default(),
        memory_limit: quantity("jwtgate.io/memory-limit", d.memory_limit.as_ref())?,
        native_sidecar,
    })
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

fn is_dns_label(v: &str) -> bool {
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
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(STATUS.into(), "injected".into());
    annotations.insert("prometheus.io/scrape".into(), "true".into());
    annotations.insert("prometheus.io/port".into(), s.admin_port.to_string());
    annotations.insert("prometheus.io/path".into(), "/metrics".into());
    let spec = pod.spec.get_or_insert_with(Default::default);
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
    volumes.push(Volume {
        name: STATE_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

// long-function: the injected container spec, field by field, reads best as one
// literal next to its documentation in README "Sidecar injection".
fn sidecar(s: &Settings, d: &Defaults) -> Container {
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("jwtgate-admin".into()),
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
    Container {
        name: CONTAINER.into(),
        image: Some(s.image.clone()),
        args: Some(vec![
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
        ]),
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
        volume_mounts: Some(vec![
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
        ]),
        ..Default::default()
    }
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
            args.ends_with("--watch"),
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
}
