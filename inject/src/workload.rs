//! Kubernetes objects and where their pods are: a Pod is one, the workloads hold a pod
//! template, a `List` holds objects. Everything else passes through untouched.

use serde_json::Value;

use crate::pod::{self, InjectError, Outcome};
use crate::settings::Settings;

/// Where the pod template sits in an object of this kind; `Some(&[])` for a Pod itself.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// `Kind/name` (with the namespace when it has one), for messages.
pub fn describe(obj: &Value) -> String {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind}/{name} in {ns}"),
        None => format!("{kind}/{name}"),
    }
}

/// What happened to each pod-bearing object (described) in a document.
pub type Report = Vec<(String, Result<Outcome, InjectError>)>;

/// Injects into every pod in `obj` (recursing into a `List`).
pub fn inject(obj: &mut Value, defaults: &Settings) -> Report {
    let mut report = Vec::new();
    each_pod(obj, &mut |what, meta, spec| {
        report.push((what, pod::inject(meta, spec, defaults)));
    });
    report
}

/// Removes what injection added from every pod in `obj`.
pub fn uninject(obj: &mut Value) -> Report {
    let mut report = Vec::new();
    each_pod(obj, &mut |what, meta, spec| {
        let outcome = if pod::uninject(meta, spec) {
            Outcome::Injected { warnings: vec![] }
        } else {
            Outcome::Unchanged {
                reason: "not injected".into(),
            }
        };
        report.push((what, Ok(outcome)));
    });
    report
}

fn each_pod(obj: &mut Value, f: &mut dyn FnMut(String, &mut Value, &mut Value)) {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                each_pod(item, f);
            }
        }
        return;
    }
    let Some(path) = template_path(&kind) else {
        return;
    };
    let what = describe(obj);
    let mut template = &mut *obj;
    for step in path {
        match template.get_mut(*step) {
            Some(next) => template = next,
            None => return,
        }
    }
    let Some(t) = template.as_object_mut() else {
        return;
    };
    // metadata is created if absent (a template may have none); a pod without a spec is
    // not a pod to inject.
    if !t.contains_key("spec") {
        return;
    }
    let mut meta = t.get("metadata").cloned().unwrap_or(Value::Null);
    let Some(spec) = t.get_mut("spec") else {
        return;
    };
    f(what, &mut meta, spec);
    if meta.is_null() || meta.as_object().is_some_and(|m| m.is_empty()) {
        t.shift_remove("metadata");
    } else if let Some(slot) = t.get_mut("metadata") {
        *slot = meta;
    } else {
        // A new key goes first, where `kubectl` and people write metadata.
        t.shift_insert(0, "metadata".into(), meta);
    }
}
