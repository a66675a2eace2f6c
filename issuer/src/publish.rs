//! The trust bundle, in every namespace: the ConfigMap `meshlet-ca-bundle` (key `ca.crt`) that
//! injected pods mount, kept equal to the issuer's bundle. Checked every interval and at once
//! when the bundle changes; both replicas may do it (a conflict is settled at the next round).

use std::collections::BTreeMap;
use std::time::Duration;

use meshlet_defaults::issuer::BUNDLE_CONFIGMAP;
use meshlet_defaults::values::BUNDLE_FILE;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::kube::{self, Api};

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub created: usize,
    pub updated: usize,
    pub failed: usize,
}

/// Publishes until the process ends.
pub async fn run(api: Api, mut bundle: tokio::sync::watch::Receiver<String>, every: Duration) {
    loop {
        let current = bundle.borrow_and_update().clone();
        match once(&api, &current).await {
            Ok(round) if round != Round::default() => {
                info!(
                    created = round.created,
                    updated = round.updated,
                    failed = round.failed,
                    configmap = BUNDLE_CONFIGMAP,
                    "trust bundle published"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "trust bundle not published this round"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            changed = bundle.changed() => if changed.is_err() { return },
        }
    }
}

/// One round: every active namespace gets the ConfigMap, or has it made equal to `bundle`.
pub async fn once(api: &Api, bundle: &str) -> Result<Round, String> {
    let get = |path: String| async move {
        match api.call(http::Method::GET, &path, None).await {
            Ok((status, v)) if status.is_success() => Ok(v),
            Ok((status, v)) => Err(format!("GET {path}: {}", kube::message(status, &v))),
            Err(e) => Err(e.to_string()),
        }
    };
    let namespaces = get("/api/v1/namespaces".into()).await?;
    let existing = get(format!(
        "/api/v1/configmaps?fieldSelector=metadata.name%3D{BUNDLE_CONFIGMAP}"
    ))
    .await?;
    let mut have: BTreeMap<&str, &Value> = BTreeMap::new();
    for cm in existing["items"].as_array().into_iter().flatten() {
        if let Some(ns) = cm["metadata"]["namespace"].as_str() {
            have.insert(ns, cm);
        }
    }
    let mut round = Round::default();
    for ns in namespaces["items"].as_array().into_iter().flatten() {
        let (Some(name), "Active") = (
            ns["metadata"]["name"].as_str(),
            ns["status"]["phase"].as_str().unwrap_or("Active"),
        ) else {
            continue;
        };
        let wanted = |resource_version: Option<&Value>| {
            let mut metadata = json!({
                "name": BUNDLE_CONFIGMAP,
                "namespace": name,
                "labels": {"app.kubernetes.io/managed-by": "meshlet-issuer"},
            });
            if let Some(rv) = resource_version {
                metadata["resourceVersion"] = rv.clone();
            }
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {BUNDLE_FILE: bundle}})
        };
        let call = match have.get(name) {
            None => Some((
                http::Method::POST,
                format!("/api/v1/namespaces/{name}/configmaps"),
                wanted(None),
            )),
            Some(cm) if cm["data"][BUNDLE_FILE].as_str() != Some(bundle) => Some((
                http::Method::PUT,
                format!("/api/v1/namespaces/{name}/configmaps/{BUNDLE_CONFIGMAP}"),
                wanted(Some(&cm["metadata"]["resourceVersion"])),
            )),
            Some(_) => None,
        };
        let Some((method, path, body)) = call else {
            continue;
        };
        let creating = method == http::Method::POST;
        match api.call(method, &path, Some(&body)).await {
            Ok((status, _)) if status.is_success() => {
                if creating {
                    round.created += 1
                } else {
                    round.updated += 1
                }
            }
            // The other replica was first; the next round sees what it wrote.
            Ok((http::StatusCode::CONFLICT, _)) => {}
            Ok((status, v)) => {
                round.failed += 1;
                warn!(namespace = name, error = %kube::message(status, &v), "trust bundle not published in this namespace");
            }
            Err(e) => {
                round.failed += 1;
                warn!(namespace = name, error = %e, "trust bundle not published in this namespace");
            }
        }
    }
    Ok(round)
}
