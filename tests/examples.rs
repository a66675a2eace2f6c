//! What the project ships for Kubernetes (examples/kubernetes, deploy/) is valid Kubernetes for
//! 1.29 and the newest version, the injected examples are what `meshlet inject` makes today,
//! and every meshlet configuration inside a ConfigMap is one the proxy accepts.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every .yaml file under the folders, sorted.
fn yaml_files(dirs: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        walk(&root().join(d), &mut out);
    }
    out.sort();
    out
}

fn docs(path: &Path) -> Vec<Value> {
    meshlet_inject::manifest::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_shipped_kubernetes_manifest_validates() {
    let files = yaml_files(&["examples/kubernetes", "deploy"]);
    assert!(files.len() >= 8, "{files:?}");
    let Some(validator) = validator_or_skip("shipped_manifests_validate") else {
        return;
    };
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    kubernetes_validate(&validator, &refs).unwrap();
}

#[test]
fn the_injected_examples_are_what_meshlet_inject_makes() {
    let injected = yaml_files(&["examples/kubernetes"])
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".injected.yaml"))
        .collect::<Vec<_>>();
    assert_eq!(injected.len(), 3, "{injected:?}");
    for out in injected {
        let source = PathBuf::from(out.to_string_lossy().replace(".injected.yaml", ".yaml"));
        let (now, err, code) = meshlet_with_input(&["inject", source.to_str().unwrap()], "");
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            meshlet_inject::manifest::parse(&now).unwrap(),
            docs(&out),
            "{} is stale: run meshlet inject {} > {}",
            out.display(),
            source.display(),
            out.display()
        );
    }
}

/// Every `image:` anywhere in the document, with where it is.
fn images(v: &Value, at: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v.as_str()) {
                    ("image", Some(image)) => out.push((at.clone(), image.to_owned())),
                    _ => images(v, format!("{at}.{k}"), out),
                }
            }
        }
        Value::Array(l) => {
            for (i, v) in l.iter().enumerate() {
                images(v, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_meshlet_image_the_project_ships_is_the_one_inject_uses() {
    // The injector's default image, as it writes it.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: b}]\n";
    let (out, err, code) = meshlet_with_input(&["inject", "-"], pod);
    assert_eq!(code, 0, "{err}");
    let mut injected = Vec::new();
    images(
        &meshlet_inject::manifest::parse(&out).unwrap()[0],
        String::new(),
        &mut injected,
    );
    let default = injected
        .iter()
        .find(|(_, i)| i.starts_with("meshlet:"))
        .map(|(_, i)| i.clone())
        .unwrap();

    let mut other = Vec::new();
    for file in yaml_files(&["examples/kubernetes", "deploy"]) {
        for (n, doc) in docs(&file).iter().enumerate() {
            let mut found = Vec::new();
            images(doc, String::new(), &mut found);
            other.extend(
                found
                    .into_iter()
                    .filter(|(_, i)| i.starts_with("meshlet") && *i != default)
                    .map(|(at, i)| format!("{} document {n} {at}: {i}", file.display())),
            );
        }
    }
    assert!(
        other.is_empty(),
        "images that are not inject's default {default}:\n{}",
        other.join("\n")
    );
}

#[test]
fn the_hand_meshed_pod_is_left_alone_by_inject() {
    let file = root().join("examples/kubernetes/app-pod.yaml");
    let (out, err, code) = meshlet_with_input(&["inject", file.to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("meshed by hand"), "{err}");
    assert_eq!(meshlet_inject::manifest::parse(&out).unwrap(), docs(&file));
}

#[test]
fn every_meshlet_configuration_in_a_config_map_is_accepted_by_the_proxy() {
    let mut seen = 0;
    for file in yaml_files(&["examples/kubernetes", "deploy"]) {
        for doc in docs(&file) {
            if doc["kind"] != "ConfigMap" {
                continue;
            }
            if let Some(text) = doc["data"]["meshlet.yaml"].as_str() {
                meshlet_proxy::config::Config::parse(text, &file.display().to_string(), &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 2);
}

#[test]
fn the_readme_lists_every_annotation_with_its_meaning() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `meshlet.io/"))
        .collect();
    let expected: Vec<String> = meshlet_inject::settings::ANNOTATIONS
        .iter()
        .map(|(name, what)| format!("| `meshlet.io/{name}` | {what} |"))
        .collect();
    assert_eq!(
        rows, expected,
        "README's annotation table differs from settings::ANNOTATIONS"
    );
}
