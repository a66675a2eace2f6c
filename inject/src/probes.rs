//! App probes: the kubelet's httpGet, tcpSocket and grpc probes of the app containers are
//! rewritten to the sidecar's admin port (`/app-health/<container>/<kind>`), and the originals
//! handed to the proxy (`MESHLET_ADMIN_APP_PROBES`), which runs them against the app over
//! loopback. The kubelet's plaintext request then never reaches an app port, so strict mode
//! stays strict. Each handed-over entry keeps the original probe verbatim, so `--uninject`
//! restores it exactly, and the port it resolves to, so the proxy needs no container spec.

use serde_json::{json, Map, Value};

use meshlet_defaults::ADMIN_PORT;

/// The probe fields of a container and the name each has in the admin path.
pub const KINDS: &[(&str, &str)] = &[
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
];

/// The environment variable (of the configuration key `admin.app_probes`) the proxy reads.
pub fn env() -> String {
    meshlet_defaults::keys::APP_PROBES.env()
}

const HANDLERS: &[&str] = &["httpGet", "tcpSocket", "grpc"];

/// The admin path that answers for one probe.
pub fn path(container: &str, kind: &str) -> String {
    format!("/app-health/{container}/{kind}")
}

/// Rewrites the probes of one app container; returns the entries for the proxy
/// (`<container>/<kind>` → `{port, probe}`) and a warning per probe left alone.
pub fn rewrite(
    container: &mut Value,
    entries: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let ports = container.get("ports").cloned().unwrap_or(Value::Null);
    let Some(obj) = container.as_object_mut() else {
        return;
    };
    for (field, kind) in KINDS {
        let Some(probe) = obj.get(*field) else {
            continue;
        };
        let Some((handler, spec)) = probe
            .as_object()
            .and_then(|p| HANDLERS.iter().find_map(|h| p.get(*h).map(|s| (*h, s))))
        else {
            continue; // exec probes run inside the container; nothing to do
        };
        if handler == "httpGet" && spec.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
            warnings.push(format!(
                "container {name}: the HTTPS {kind} probe is left as it is (the proxy runs HTTP, TCP and gRPC probes); in strict mode exclude its port with {}exclude-inbound-ports",
                crate::settings::PREFIX
            ));
            continue;
        }
        let Some(port) = resolve_port(spec.get("port"), &ports) else {
            warnings.push(format!(
                "container {name}: the {kind} probe's port {} is not a number or a named port of the container; probe left as it is",
                spec.get("port").unwrap_or(&Value::Null)
            ));
            continue;
        };
        entries.insert(
            format!("{name}/{kind}"),
            json!({"port": port, "probe": probe.clone()}),
        );
        let rewritten: Map<String, Value> = probe
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                if k == handler {
                    (
                        "httpGet".to_owned(),
                        json!({"path": path(&name, kind), "port": ADMIN_PORT}),
                    )
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        obj.insert((*field).to_owned(), Value::Object(rewritten));
    }
}

/// Puts back the probes `rewrite` changed, from the entries the proxy was given.
pub fn restore(container: &mut Value, entries: &Map<String, Value>) {
    let name = container
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(obj) = container.as_object_mut() else {
        return;
    };
    for (field, kind) in KINDS {
        let ours = obj
            .get(*field)
            .and_then(|p| p.get("httpGet"))
            .is_some_and(|h| {
                h.get("path").and_then(Value::as_str) == Some(&path(&name, kind))
                    && h.get("port").and_then(Value::as_u64) == Some(u64::from(ADMIN_PORT))
            });
        if !ours {
            continue;
        }
        if let Some(original) = entries
            .get(&format!("{name}/{kind}"))
            .and_then(|e| e.get("probe"))
        {
            obj.insert((*field).to_owned(), original.clone());
        }
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(port: Option<&Value>, container_ports: &Value) -> Option<u16> {
    match port? {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|p| *p != 0),
        Value::String(s) => match s.parse::<u16>() {
            Ok(p) if p != 0 => Some(p),
            Ok(_) => None,
            Err(_) => container_ports.as_array()?.iter().find_map(|p| {
                (p.get("name").and_then(Value::as_str) == Some(s.as_str()))
                    .then(|| p.get("containerPort").and_then(Value::as_u64))
                    .flatten()
                    .and_then(|n| u16::try_from(n).ok())
            }),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Value {
        json!({
            "name": "app",
            "image": "nginx",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 3},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "timeoutSeconds": 2},
            "startupProbe": {"grpc": {"port": 9090, "service": "ready"}},
        })
    }

    #[test]
    fn probes_go_to_the_admin_port_and_come_back_exactly() {
        let original = app();
        let mut c = original.clone();
        let (mut entries, mut warnings) = (Map::new(), vec![]);
        rewrite(&mut c, &mut entries, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/app/readiness", "port": 15021}, "timeoutSeconds": 2})
        );
        assert_eq!(c["livenessProbe"]["periodSeconds"], 3);
        assert_eq!(
            c["startupProbe"]["httpGet"]["path"],
            "/app-health/app/startup"
        );
        assert_eq!(entries["app/readiness"]["port"], 8080);
        assert_eq!(entries["app/startup"]["port"], 9090);
        restore(&mut c, &entries);
        assert_eq!(c, original);
    }

    #[test]
    fn exec_https_and_unresolvable_probes_are_left_alone_with_a_warning_when_it_matters() {
        let original = json!({
            "name": "app",
            "livenessProbe": {"exec": {"command": ["true"]}},
            "readinessProbe": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}},
            "startupProbe": {"tcpSocket": {"port": "missing"}},
        });
        let mut c = original.clone();
        let (mut entries, mut warnings) = (Map::new(), vec![]);
        rewrite(&mut c, &mut entries, &mut warnings);
        assert_eq!(c, original);
        assert!(entries.is_empty());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }
}
