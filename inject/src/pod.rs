//! Injection into one pod (a Pod, or the pod template of a workload): given its metadata and
//! spec, add the init container, the sidecar, their volumes and the rewritten probes, or take
//! exactly those away. Injecting twice changes nothing: what was injected is first removed and
//! then injected again from the same settings.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::probes;
use crate::settings::{self, AnnotationError, Settings, SidecarMode, INJECTED_KEY, PREFIX};
use crate::sidecar::{self, CONFIG_VOLUME, IDENTITY_VOLUME, INIT_NAME, PROXY_NAME};

/// What happened to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar is in (again); warnings name what was left as it was (a probe, say).
    Injected { warnings: Vec<String> },
    /// Left alone on purpose, and why.
    Unchanged { reason: String },
}

/// A pod that cannot be injected as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error("{0}")]
    Malformed(String),
}

fn marker() -> String {
    format!("{PREFIX}{INJECTED_KEY}")
}

/// The fields injection fills that a pod may already have, empty (`annotations: {}`,
/// `initContainers: []`, `volumes: []`). Those it found empty are named in the mark, so that
/// `--uninject` leaves them as they were instead of removing them.
const FILLED: [&str; 3] = ["annotations", "initContainers", "volumes"];

/// How the mark says which fields were there, empty: `0.1.0 (kept empty: annotations, volumes)`.
const KEPT_EMPTY: &str = " (kept empty: ";

/// The fields among [`FILLED`] that the pod has, empty.
fn empty_before(meta: &Value, spec: &Value) -> Vec<&'static str> {
    FILLED
        .into_iter()
        .filter(|f| {
            let v = if *f == "annotations" {
                meta.get(f)
            } else {
                spec.get(f)
            };
            v.is_some_and(|v| {
                v.as_array().is_some_and(|a| a.is_empty())
                    || v.as_object().is_some_and(|o| o.is_empty())
            })
        })
        .collect()
}

/// The fields the mark on an injected pod names as found empty.
fn kept_empty(meta: &Value) -> Vec<String> {
    meta.get("annotations")
        .and_then(|a| a.get(marker()))
        .and_then(Value::as_str)
        .and_then(|v| v.split_once(KEPT_EMPTY))
        .map(|(_, fields)| {
            fields
                .trim_end_matches(')')
                .split(", ")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The pod's annotations; every value must be a string, as the API server requires.
pub fn annotations(meta: &Value) -> Result<BTreeMap<String, String>, InjectError> {
    let Some(map) = meta.get("annotations") else {
        return Ok(BTreeMap::new());
    };
    if map.is_null() {
        return Ok(BTreeMap::new());
    }
    map.as_object()
        .ok_or_else(|| InjectError::Malformed("metadata.annotations is not a map".into()))?
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(InjectError::Malformed(format!(
                "annotation {k} is not a string (quote it)"
            ))),
        })
        .collect()
}

/// Whether injection put the sidecar into this pod.
pub fn is_injected(meta: &Value) -> bool {
    meta.get("annotations")
        .and_then(|a| a.get(marker()))
        .is_some()
}

/// Injects into one pod: `meta` is its metadata, `spec` its spec.
pub fn inject(
    meta: &mut Value,
    spec: &mut Value,
    defaults: &Settings,
) -> Result<Outcome, InjectError> {
    let notes = annotations(meta)?;
    if settings::inject_switch(&notes)? == Some(false) {
        return Ok(Outcome::Unchanged {
            reason: format!("{PREFIX}inject is false"),
        });
    }
    if spec.get("hostNetwork").is_some_and(yaml_1_1_true) {
        return Ok(Outcome::Unchanged {
            reason: "the pod uses the host network: capture rules would capture the node's traffic"
                .into(),
        });
    }
    if !spec.get("containers").is_some_and(Value::is_array) {
        return Err(InjectError::Malformed(
            "spec.containers is not a list".into(),
        ));
    }
    for list in ["initContainers", "volumes"] {
        if spec
            .get(list)
            .is_some_and(|l| !l.is_array() && !l.is_null())
        {
            return Err(InjectError::Malformed(format!("spec.{list} is not a list")));
        }
    }
    let injected_before = is_injected(meta);
    if !injected_before {
        if let Some(name) = [INIT_NAME, PROXY_NAME]
            .into_iter()
            .find(|n| has_container(spec, n))
        {
            return Ok(Outcome::Unchanged {
                reason: format!(
                    "it already has a container named {name} that injection did not add (meshed by hand?)"
                ),
            });
        }
    }
    // Everything that can fail is decided before anything changes.
    let settings = defaults.clone().with_annotations(&notes)?;
    if injected_before {
        uninject(meta, spec);
    }
    let empty = empty_before(meta, spec);

    let mut warnings = Vec::new();
    if let Some(image) = &settings.ignored_image {
        warnings.push(format!(
            "{PREFIX}image {image:?} ignored: the webhook runs only the operator's images ({}; allow others with meshlet webhook --allow-image)",
            settings.image
        ));
    }
    let mut app_probes = Map::new();
    for c in probed_containers(spec) {
        probes::rewrite(c, &mut app_probes, &mut warnings);
    }
    let service_account = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let proxy = sidecar::proxy_container(&settings, &app_probes);
    let Some(obj) = spec.as_object_mut() else {
        return Err(InjectError::Malformed("spec is not a map".into()));
    };
    let native = settings.sidecar == SidecarMode::Native;
    let init = sidecar::init_container(&settings);
    if native {
        with_list(obj, "initContainers", |l| {
            l.splice(0..0, [init, proxy]).for_each(drop)
        });
    } else {
        with_list(obj, "initContainers", |l| l.insert(0, init));
        with_list(obj, "containers", |l| l.insert(0, proxy));
    }
    with_list(obj, "volumes", |l| {
        l.extend(sidecar::volumes(&settings, &service_account))
    });
    set_marker(meta, &empty)?;
    Ok(Outcome::Injected { warnings })
}

/// Removes exactly what [`inject`] added; returns whether anything was.
pub fn uninject(meta: &mut Value, spec: &mut Value) -> bool {
    if !is_injected(meta) {
        return false;
    }
    let entries = app_probe_entries(spec);
    let kept = kept_empty(meta);
    let keep = |field: &str| kept.iter().any(|k| k == field);
    let Some(obj) = spec.as_object_mut() else {
        return false;
    };
    for (field, names) in [
        ("initContainers", &[INIT_NAME, PROXY_NAME][..]),
        ("containers", &[PROXY_NAME][..]),
        ("volumes", &[IDENTITY_VOLUME, CONFIG_VOLUME][..]),
    ] {
        if let Some(items) = obj.get_mut(field).and_then(Value::as_array_mut) {
            items.retain(|c| !names.contains(&c.get("name").and_then(Value::as_str).unwrap_or("")));
            if items.is_empty() && field != "containers" && !keep(field) {
                obj.shift_remove(field);
            }
        }
    }
    for c in probed_containers(spec) {
        probes::restore(c, &entries);
    }
    if let Some(notes) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        notes.shift_remove(&marker());
        if notes.is_empty() && !keep("annotations") {
            if let Some(m) = meta.as_object_mut() {
                m.shift_remove("annotations");
            }
        }
    }
    true
}

/// Whether kubectl (a YAML 1.1 reader) reads this field as `true`: a boolean field written
/// `yes`, `on` or `y` is true to it, though a YAML 1.2 parser hands it over as a string.
fn yaml_1_1_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(
            s.as_str(),
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE"
        ),
        _ => false,
    }
}

/// The containers the kubelet probes: the app containers and the pod's own native sidecars
/// (init containers with `restartPolicy: Always`, which run and are probed beside the app).
fn probed_containers(spec: &mut Value) -> impl Iterator<Item = &mut Value> {
    let Some(obj) = spec.as_object_mut() else {
        return Vec::new().into_iter();
    };
    let mut found = Vec::new();
    for (field, list) in obj.iter_mut() {
        let Some(list) = list.as_array_mut() else {
            continue;
        };
        match field.as_str() {
            "containers" => found.extend(list.iter_mut()),
            "initContainers" => found.extend(
                list.iter_mut()
                    .filter(|c| c.get("restartPolicy").and_then(Value::as_str) == Some("Always")),
            ),
            _ => {}
        }
    }
    found.into_iter()
}

/// The probe entries handed to the injected sidecar, read back from its environment.
fn app_probe_entries(spec: &Value) -> Map<String, Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|f| spec.get(*f).and_then(Value::as_array))
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_NAME))
        .filter_map(|c| c.get("env").and_then(Value::as_array))
        .flatten()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(probes::env().as_str()))
        .and_then(|e| e.get("value").and_then(Value::as_str))
        .and_then(|v| serde_json::from_str::<Map<String, Value>>(v).ok())
        .unwrap_or_default()
}

fn has_container(spec: &Value, name: &str) -> bool {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|f| spec.get(*f).and_then(Value::as_array))
        .flatten()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

/// Runs `f` on the list under `key`, created in place when absent (or null).
fn with_list(obj: &mut Map<String, Value>, key: &str, f: impl FnOnce(&mut Vec<Value>)) {
    match obj.get_mut(key) {
        Some(Value::Array(items)) => f(items),
        _ => {
            let mut items = Vec::new();
            f(&mut items);
            obj.insert(key.into(), Value::Array(items));
        }
    }
}

fn set_marker(meta: &mut Value, empty_before: &[&str]) -> Result<(), InjectError> {
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    let obj = meta
        .as_object_mut()
        .ok_or_else(|| InjectError::Malformed("metadata is not a map".into()))?;
    let notes = obj
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if notes.is_null() {
        *notes = Value::Object(Map::new());
    }
    let notes = notes
        .as_object_mut()
        .ok_or_else(|| InjectError::Malformed("metadata.annotations is not a map".into()))?;
    let mut mark = env!("CARGO_PKG_VERSION").to_owned();
    if !empty_before.is_empty() {
        mark = format!("{mark}{KEPT_EMPTY}{})", empty_before.join(", "));
    }
    notes.insert(marker(), Value::String(mark));
    Ok(())
}
