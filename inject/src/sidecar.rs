//! What injection adds to a pod spec: the `meshlet-init` init container, the `meshlet`
//! sidecar (native or classic) and their volumes, built from the [`Settings`].

use serde_json::{json, Map, Value};

use meshlet_defaults::issuer::{
    BUNDLE_CONFIGMAP, TOKEN_AUDIENCE, TOKEN_EXPIRATION_SECONDS, TOKEN_FILE,
};
use meshlet_defaults::keys::{
    APP_PROBES, CONFIG_ENV, IDENTITY_ISSUER, INBOUND_MODE, LOG_LEVEL, OUTBOUND_DESTINATIONS,
    TRUST_DOMAIN,
};
use meshlet_defaults::values::{BUNDLE_FILE, IDENTITY_DIR};
use meshlet_defaults::{ADMIN_PORT, PROXY_UID};

use crate::settings::{IdentitySource, Settings, SidecarMode};

/// Container and volume names; injection owns exactly these.
pub const INIT_NAME: &str = "meshlet-init";
pub const PROXY_NAME: &str = "meshlet";
pub const IDENTITY_VOLUME: &str = "meshlet-identity";
pub const CONFIG_VOLUME: &str = "meshlet-config";

/// Where the configuration is mounted (the identity: where the proxy looks by default).
const CONFIG_DIR: &str = "/etc/meshlet";
const SPIRE_DIR: &str = "/spiffe-workload-api";
/// The binary's path in the image, for the classic sidecar's postStart hook.
const BINARY: &str = "/usr/local/bin/meshlet";
/// How long the app waits for the proxy: native sidecars through the startupProbe (1 s × 120),
/// classic ones through the postStart hook.
const START_WAIT_SECONDS: u32 = 120;

/// The capture step: NET_ADMIN and NET_RAW only, as root, everything else dropped.
pub fn init_container(s: &Settings) -> Value {
    let mut args = vec!["init".to_owned()];
    args.extend(s.capture.to_flags());
    json!({
        "name": INIT_NAME,
        "image": s.image,
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

/// The proxy: uid 1337, read-only root, no privilege escalation, no capabilities.
pub fn proxy_container(s: &Settings, app_probes: &Map<String, Value>) -> Value {
    let admin = |path: &str| json!({"httpGet": {"path": path, "port": ADMIN_PORT}});
    let mut c = Map::new();
    c.insert("name".into(), json!(PROXY_NAME));
    c.insert("image".into(), json!(s.image));
    c.insert("args".into(), json!(["proxy"]));
    if s.sidecar == SidecarMode::Native {
        c.insert("restartPolicy".into(), json!("Always"));
    }
    let env = env(s, app_probes);
    if !env.is_empty() {
        c.insert("env".into(), Value::Array(env));
    }
    c.insert(
        "ports".into(),
        json!([{"name": "meshlet-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}]),
    );
    match s.sidecar {
        SidecarMode::Native => {
            let mut startup = admin("/ready");
            startup["periodSeconds"] = json!(1);
            startup["failureThreshold"] = json!(START_WAIT_SECONDS);
            c.insert("startupProbe".into(), startup);
        }
        SidecarMode::Classic => {
            // The kubelet starts the next container only when this hook returns: the app
            // starts with its traffic already handled.
            c.insert(
                "lifecycle".into(),
                json!({"postStart": {"exec": {"command": [
                    BINARY, "wait-ready", "--timeout", format!("{START_WAIT_SECONDS}s")
                ]}}}),
            );
        }
    }
    c.insert("readinessProbe".into(), admin("/ready"));
    c.insert("livenessProbe".into(), admin("/live"));
    c.insert("resources".into(), resources(s));
    c.insert(
        "securityContext".into(),
        json!({
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        }),
    );
    let mut mounts = vec![match s.identity {
        IdentitySource::Spire => {
            json!({"name": IDENTITY_VOLUME, "mountPath": SPIRE_DIR, "readOnly": true})
        }
        _ => json!({"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true}),
    }];
    if s.policy.is_some() {
        mounts.push(json!({"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": true}));
    }
    c.insert("volumeMounts".into(), Value::Array(mounts));
    Value::Object(c)
}

fn env(s: &Settings, app_probes: &Map<String, Value>) -> Vec<Value> {
    let mut env = Vec::new();
    let mut var = |name: &str, value: String| env.push(json!({"name": name, "value": value}));
    if s.policy.is_some() {
        var(CONFIG_ENV, format!("{CONFIG_DIR}/meshlet.yaml"));
    }
    if let Some(td) = &s.trust_domain {
        var(&TRUST_DOMAIN.env(), td.clone());
    }
    if let Some(mode) = s.inbound_mode {
        var(&INBOUND_MODE.env(), mode.as_str().to_owned());
    }
    if !s.mtls_cidrs.is_empty() {
        let destinations: Vec<Value> = s
            .mtls_cidrs
            .iter()
            .map(|n| json!({"cidr": n.to_string(), "mtls": "mtls"}))
            .collect();
        var(
            &OUTBOUND_DESTINATIONS.env(),
            Value::Array(destinations).to_string(),
        );
    }
    if let Some(level) = &s.log_level {
        var(&LOG_LEVEL.env(), level.clone());
    }
    if s.identity == IdentitySource::Issuer {
        var(&IDENTITY_ISSUER.env(), s.issuer_url.clone());
    }
    if s.identity == IdentitySource::Spire {
        var(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix://{SPIRE_DIR}/spire-agent.sock"),
        );
    }
    if !app_probes.is_empty() {
        var(
            &APP_PROBES.env(),
            Value::Object(app_probes.clone()).to_string(),
        );
    }
    env
}

fn resources(s: &Settings) -> Value {
    let section = |pairs: [(&str, &Option<crate::settings::Quantity>); 2]| -> Map<String, Value> {
        pairs
            .into_iter()
            .filter_map(|(k, q)| q.as_ref().map(|q| (k.to_owned(), json!(q.0))))
            .collect()
    };
    let mut r = Map::new();
    for (name, map) in [
        (
            "requests",
            section([("cpu", &s.cpu_request), ("memory", &s.memory_request)]),
        ),
        (
            "limits",
            section([("cpu", &s.cpu_limit), ("memory", &s.memory_limit)]),
        ),
    ] {
        if !map.is_empty() {
            r.insert(name.into(), Value::Object(map));
        }
    }
    Value::Object(r)
}

/// The volumes the sidecar mounts.
pub fn volumes(s: &Settings, service_account: &str) -> Vec<Value> {
    let identity = match &s.identity {
        IdentitySource::Secret(name) => {
            let name = name
                .clone()
                .unwrap_or_else(|| format!("{service_account}-svid"));
            json!({"name": IDENTITY_VOLUME, "secret": {"secretName": name}})
        }
        IdentitySource::CsiSpiffe => json!({
            "name": IDENTITY_VOLUME,
            "csi": {"driver": "spiffe.csi.cert-manager.io", "readOnly": true},
        }),
        IdentitySource::Spire => json!({
            "name": IDENTITY_VOLUME,
            "csi": {"driver": "csi.spiffe.io", "readOnly": true},
        }),
        // The token and the bundle side by side where the proxy looks by default.
        IdentitySource::Issuer => json!({
            "name": IDENTITY_VOLUME,
            "projected": {"sources": [
                {"serviceAccountToken": {
                    "audience": TOKEN_AUDIENCE,
                    "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                    "path": TOKEN_FILE,
                }},
                {"configMap": {
                    "name": BUNDLE_CONFIGMAP,
                    "items": [{"key": BUNDLE_FILE, "path": BUNDLE_FILE}],
                }},
            ]},
        }),
    };
    let mut v = vec![identity];
    if let Some(cm) = &s.policy {
        v.push(json!({"name": CONFIG_VOLUME, "configMap": {"name": cm}}));
    }
    v
}
