//! `meshlet inject`: every workload kind gets the init container and the sidecar, everything
//! else passes through in order; injecting twice changes nothing; `--uninject` takes away
//! exactly what was added; what comes out is valid Kubernetes (1.29 and the newest).

mod common;

use common::*;
use serde_json::Value;

const WORKLOADS: &str = include_str!("data/workloads.yaml");

fn inject(args: &[&str], input: &str) -> String {
    let mut all = vec!["inject"];
    all.extend_from_slice(args);
    let (out, err, code) = meshlet_with_input(&all, input);
    assert_eq!(code, 0, "meshlet inject {args:?} failed: {err}");
    out
}

fn docs(yaml: &str) -> Vec<Value> {
    meshlet_inject::manifest::parse(yaml).unwrap()
}

/// The pod spec of a document, wherever its kind keeps it.
fn pod_spec(doc: &Value) -> &Value {
    match doc["kind"].as_str().unwrap() {
        "Pod" => &doc["spec"],
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn validate(test: &str, yaml: &str) {
    let Some(validator) = validator_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, yaml).unwrap();
    kubernetes_validate(&validator, &[&file]).unwrap();
}

#[test]
fn every_workload_kind_gets_the_native_sidecar_and_other_objects_pass_through_in_order() {
    let out = docs(&inject(&[], WORKLOADS));
    let input = docs(WORKLOADS);
    assert_eq!(out.len(), input.len());
    let kinds: Vec<&str> = out.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Pod",
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "ReplicaSet",
            "ReplicationController",
            "Job",
            "CronJob",
            "List",
            "Pod",
            "Pod"
        ]
    );
    assert_eq!(out[0], input[0], "a ConfigMap is not touched");
    for doc in &out[1..9] {
        let spec = pod_spec(doc);
        let inits = names(&spec["initContainers"]);
        if doc["metadata"]["name"] == "rs" {
            // classic, by annotation: a regular container, placed first
            assert_eq!(inits, ["meshlet-init"]);
            assert_eq!(names(&spec["containers"])[0], "meshlet");
            assert!(spec["containers"][0].get("restartPolicy").is_none());
            assert!(spec["containers"][0]["lifecycle"]["postStart"].is_object());
        } else {
            assert_eq!(
                &inits[..2],
                ["meshlet-init", "meshlet"],
                "{}",
                doc["metadata"]["name"]
            );
            let proxy = &spec["initContainers"][1];
            assert_eq!(proxy["restartPolicy"], "Always");
            assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
            assert!(!names(&spec["containers"]).contains(&"meshlet"));
        }
    }
    // the user's own init container runs after the proxy is up
    assert_eq!(
        names(&pod_spec(&out[3])["initContainers"]),
        ["meshlet-init", "meshlet", "migrate"]
    );
    // List items are injected; the Service in it is not
    assert_eq!(
        names(&out[9]["items"][0]["spec"]["initContainers"])[..2],
        ["meshlet-init", "meshlet"]
    );
    assert_eq!(out[9]["items"][1], input[9]["items"][1]);
    // opted out and host network: untouched
    assert_eq!(out[10], input[10]);
    assert_eq!(out[11], input[11]);
    validate("inject_native", &inject(&[], WORKLOADS));
}

#[test]
fn the_sidecar_is_locked_down_and_the_init_container_has_only_net_admin_and_net_raw() {
    let out = docs(&inject(&[], WORKLOADS));
    let spec = pod_spec(&out[2]);
    let init = &spec["initContainers"][0]["securityContext"];
    assert_eq!(init["runAsUser"], 0);
    assert_eq!(
        init["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(init["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let proxy = &spec["initContainers"][1]["securityContext"];
    assert_eq!(proxy["runAsUser"], 1337);
    assert_eq!(proxy["runAsNonRoot"], true);
    assert_eq!(proxy["readOnlyRootFilesystem"], true);
    assert_eq!(proxy["allowPrivilegeEscalation"], false);
    assert_eq!(proxy["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(proxy["capabilities"].get("add").is_none());
}

#[test]
fn annotations_choose_the_identity_volume_ports_policy_and_mtls_destinations() {
    let out = docs(&inject(&[], WORKLOADS));
    let volume = |i: usize| pod_spec(&out[i])["volumes"][0].clone();
    assert_eq!(volume(1)["secret"]["secretName"], "web-svid");
    assert_eq!(volume(2)["secret"]["secretName"], "default-svid");
    assert_eq!(volume(3)["csi"]["driver"], "spiffe.csi.cert-manager.io");
    assert_eq!(volume(4)["csi"]["driver"], "csi.spiffe.io");
    let web = pod_spec(&out[1]);
    assert_eq!(
        web["initContainers"][0]["args"],
        serde_json::json!(["init", "--exclude-inbound-ports", "9090"])
    );
    let rs = &pod_spec(&out[5])["containers"][0];
    let env: Vec<(&str, &str)> = rs["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert!(env.contains(&("MESHLET_CONFIG", "/etc/meshlet/meshlet.yaml")));
    assert!(env.contains(&(
        "MESHLET_OUTBOUND_DESTINATIONS",
        r#"[{"cidr":"198.18.0.0/15","mtls":"mtls"}]"#
    )));
    assert_eq!(
        pod_spec(&out[5])["volumes"][1]["configMap"]["name"],
        "rs-meshlet"
    );
    let spire = &pod_spec(&out[4])["initContainers"][1]["env"][0];
    assert_eq!(spire["name"], "SPIFFE_ENDPOINT_SOCKET");
}

#[test]
fn probes_point_at_the_admin_port_and_the_proxy_accepts_the_originals() {
    let out = docs(&inject(&[], WORKLOADS));
    let web = pod_spec(&out[1]);
    let app = &web["containers"][0];
    for (field, kind) in [
        ("livenessProbe", "liveness"),
        ("readinessProbe", "readiness"),
        ("startupProbe", "startup"),
    ] {
        assert_eq!(app[field]["httpGet"]["port"], 15021);
        assert_eq!(
            app[field]["httpGet"]["path"],
            format!("/app-health/web/{kind}")
        );
    }
    assert_eq!(app["livenessProbe"]["periodSeconds"], 5, "timing is kept");
    let env = web["initContainers"][1]["env"].as_array().unwrap();
    let probes = env
        .iter()
        .find(|e| e["name"] == "MESHLET_ADMIN_APP_PROBES")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    // The proxy parses exactly what injection wrote.
    let config = meshlet_proxy::config::Config::parse(
        "",
        "test",
        &[meshlet_proxy::config::Override {
            key: "admin.app_probes",
            value: probes.to_owned(),
            origin: "MESHLET_ADMIN_APP_PROBES".into(),
            yaml: true,
        }],
    )
    .unwrap();
    let p = &config.admin.app_probes;
    assert_eq!(p["web/readiness"].port, 8080, "named port resolved");
    assert_eq!(p["web/startup"].port, 9000);
    assert_eq!(p.len(), 3);
}

#[test]
fn injecting_twice_changes_nothing_and_uninject_removes_exactly_what_was_added() {
    let once = inject(&[], WORKLOADS);
    assert_eq!(inject(&[], &once), once);
    let back = inject(&["--uninject"], &once);
    assert_eq!(docs(&back), docs(WORKLOADS));
    // and a classic injection over a native one replaces it rather than adding a second
    let classic = inject(&["--sidecar", "classic"], &once);
    assert_eq!(classic, inject(&["--sidecar", "classic"], WORKLOADS));
    validate("inject_classic", &classic);
}

#[test]
fn uninject_leaves_fields_the_pod_had_empty_as_they_were() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {}\nspec:\n  initContainers: []\n  volumes: []\n  containers: [{name: a, image: b}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  containers: [{name: a, image: b}]\n";

    let once = inject(&[], input);
    let back = inject(&["--uninject"], &once);

    assert_eq!(docs(&back), docs(input), "{back}");
    assert_eq!(inject(&[], &once), once, "injecting again changes nothing");
}

#[test]
fn a_bad_annotation_fails_the_run_naming_it_and_nothing_is_written() {
    let input = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    meshlet.io/exclude-inbound-ports: http\nspec:\n  containers: [{name: a, image: b}]\n";
    let (out, err, code) = meshlet_with_input(&["inject"], input);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("Pod/p") && err.contains("meshlet.io/exclude-inbound-ports"),
        "{err}"
    );
}

#[test]
fn files_and_folders_are_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let pod = |n: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {n}}}\nspec:\n  containers: [{{name: a, image: b}}]\n")
    };
    std::fs::write(dir.path().join("b.yaml"), pod("b")).unwrap();
    std::fs::write(dir.path().join("sub/a.yml"), pod("c")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
    let single = dir.path().join("single.json");
    std::fs::write(&single, r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"a","image":"b"}]}}"#).unwrap();
    let (out, err, code) = meshlet_with_input(
        &[
            "inject",
            single.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let got: Vec<String> = docs(&out)
        .iter()
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    // single.json first, then the folder sorted by path (b.yaml, single.json, sub/a.yml)
    assert_eq!(got, ["a", "b", "a", "c"]);
}

#[test]
fn the_validator_refuses_a_misspelled_field() {
    let Some(validator) = validator_or_skip("validator_refuses") else {
        return;
    };
    let out = inject(&[], WORKLOADS).replace("readOnlyRootFilesystem", "readOnlyRootFilesytem");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, out).unwrap();
    let err = kubernetes_validate(&validator, &[&file]).unwrap_err();
    assert!(err.contains("readOnlyRootFilesytem"), "{err}");
}

#[test]
fn a_pods_own_native_sidecars_get_their_probes_rewritten_and_restored_like_the_apps() {
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: shipper}
spec:
  initContainers:
    - name: migrate
      image: migrate:1
    - name: log-shipper
      image: shipper:1
      restartPolicy: Always
      ports: [{name: metrics, containerPort: 9100}]
      readinessProbe: {httpGet: {path: /healthy, port: metrics}}
  containers:
    - name: app
      image: app:1
      livenessProbe: {tcpSocket: {port: 8080}}
"#;
    let out = inject(&[], pod);
    let spec = pod_spec(&docs(&out)[0]).clone();
    let shipper = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "log-shipper")
        .unwrap();

    assert_eq!(shipper["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(
        shipper["readinessProbe"]["httpGet"]["path"],
        "/app-health/log-shipper/readiness"
    );
    assert_eq!(docs(&inject(&["--uninject"], &out)), docs(pod));
    validate("inject_native_sidecar_probes", &out);
}

/// A Python with PyYAML (a YAML 1.1 reader, as kubectl is): kubernetes-validate's virtual
/// environment has one.
fn pyyaml_or_skip(test: &str) -> Option<std::path::PathBuf> {
    let validator = validator_or_skip(test)?;
    let python = validator.with_file_name("python");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

#[test]
fn every_string_means_to_a_yaml_1_1_reader_after_inject_what_it_meant_before() {
    let Some(python) = pyyaml_or_skip("inject_yaml_1_1") else {
        return;
    };
    // Generated strings: YAML 1.1's booleans, nulls and numbers, indicators, and random
    // mixtures of them, in env values, annotations and ConfigMap data.
    const PIECES: &[&str] = &[
        "yes",
        "No",
        "on",
        "OFF",
        "y",
        "n",
        "~",
        "null",
        "true",
        "1_000",
        "190:20:30",
        "0x1F",
        ".5e3",
        "012",
        "1e3",
        "-",
        ":",
        " ",
        "#",
        "*",
        "&",
        "!",
        "%",
        "@",
        "`",
        "'",
        "\"",
        "\\",
        "a",
        "Z",
        "9",
        ".",
        "/",
        "_",
        "\t",
        "é",
        ".inf",
        "<<",
        "=",
        "[",
        "{",
        ",",
        "?",
        "|",
        ">",
    ];
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    // Every piece alone, then random mixtures of one to four.
    let mut strings: Vec<String> = PIECES.iter().map(|p| p.to_string()).collect();
    while strings.len() < 600 {
        let n = 1 + next() % 4;
        strings.push((0..n).map(|_| PIECES[next() % PIECES.len()]).collect());
    }
    let env: Vec<Value> = strings
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"name": format!("V{i}"), "value": s}))
        .collect();
    let annotations: serde_json::Map<String, Value> = strings
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("example.com/k{i}"), Value::String(s.clone())))
        .collect();
    let data: serde_json::Map<String, Value> = strings
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("k{i}"), Value::String(s.clone())))
        .collect();
    let input = vec![
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "gen", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:1", "env": env}]}
        }),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gen"}, "data": data}),
    ];
    // JSON is YAML: the input means the same to every reader.
    let text = input
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let out = inject(&[], &text);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.json"),
        serde_json::to_string(&input).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("out.yaml"), &out).unwrap();

    let check = std::process::Command::new(&python)
        .current_dir(dir.path())
        .args([
            "-c",
            r#"
import json, yaml
pod_in, cm_in = json.load(open("in.json"))
pod_out, cm_out = list(yaml.safe_load_all(open("out.yaml")))
bad = []
env_out = {e["name"]: e.get("value") for e in pod_out["spec"]["containers"][0]["env"]}
for e in pod_in["spec"]["containers"][0]["env"]:
    if env_out.get(e["name"]) != e["value"]: bad.append(("env", e["value"], env_out.get(e["name"])))
for k, v in pod_in["metadata"]["annotations"].items():
    if pod_out["metadata"]["annotations"].get(k) != v: bad.append(("annotation", v, pod_out["metadata"]["annotations"].get(k)))
for k, v in cm_in["data"].items():
    if cm_out["data"].get(k) != v: bad.append(("data", v, cm_out["data"].get(k)))
print(len(bad)); [print(repr(b)) for b in bad[:10]]
"#,
        ])
        .output()
        .unwrap();

    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        report.lines().next(),
        Some("0"),
        "read differently by YAML 1.1:\n{report}"
    );
}

#[test]
fn a_host_network_pod_written_the_yaml_1_1_way_is_left_alone() {
    for yes in ["yes", "on", "y", "True"] {
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: h}}\nspec:\n  hostNetwork: {yes}\n  containers: [{{name: a, image: a}}]\n"
        );
        let out = inject(&[], &pod);
        assert!(
            !out.contains("meshlet-init"),
            "hostNetwork: {yes} is true to kubectl: no NET_ADMIN init container\n{out}"
        );
    }
}

/// An annotation that becomes a proxy variable is accepted exactly when the proxy accepts that
/// variable: one contract (meshlet-defaults), not two lists that drift apart.
#[test]
fn an_annotation_is_accepted_exactly_when_the_proxy_accepts_the_variable_it_becomes() {
    use meshlet_defaults::keys::{INBOUND_MODE, LOG_LEVEL, TRUST_DOMAIN};
    use meshlet_inject::settings::{IdentitySource, Settings, SidecarMode};
    use meshlet_proxy::config::{Config, Override};
    let cases = [
        (
            "inbound-mode",
            INBOUND_MODE,
            &["strict", "permissive", "Strict", "lax"][..],
        ),
        (
            "log-level",
            LOG_LEVEL,
            &["debug", "meshlet_proxy=debug,info", "off", "loud"],
        ),
        (
            "trust-domain",
            TRUST_DOMAIN,
            &[
                "cluster.local",
                "prod.example",
                "Cluster.Local",
                "a/b",
                "td x",
            ],
        ),
    ];
    for (annotation, key, values) in cases {
        for value in values {
            let annotations = std::collections::BTreeMap::from([(
                format!("meshlet.io/{annotation}"),
                value.to_string(),
            )]);
            let injector =
                Settings::defaults("meshlet:0.1.0", SidecarMode::Native, IdentitySource::Spire)
                    .with_annotations(&annotations);
            let proxy = Config::parse(
                "",
                "test",
                &[Override {
                    key: key.key,
                    value: value.to_string(),
                    origin: key.env(),
                    yaml: key.yaml,
                }],
            );
            assert_eq!(
                injector.is_ok(),
                proxy.is_ok(),
                "{annotation}: {value:?} (injector {:?}, proxy {:?})",
                injector.err(),
                proxy.err().map(|e| e.to_string())
            );
        }
    }
}

#[test]
fn the_issuer_identity_mounts_a_pod_bound_token_and_the_published_bundle_where_the_proxy_looks() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  serviceAccountName: web\n  containers: [{name: app, image: app:1}]\n";
    let out = docs(&inject(&["--identity", "issuer"], pod));
    validate("inject_issuer", &inject(&["--identity", "issuer"], pod));
    let spec = pod_spec(&out[0]);
    let volume = &spec["volumes"][0];
    assert!(volume.get("secret").is_none(), "no Secret: {volume}");
    let sources = volume["projected"]["sources"].as_array().unwrap();
    let token = &sources[0]["serviceAccountToken"];
    assert_eq!(token["audience"], "meshlet");
    assert_eq!(token["expirationSeconds"], 600);
    assert_eq!(sources[1]["configMap"]["name"], "meshlet-ca-bundle");
    let proxy = &spec["initContainers"][1];
    let mount = proxy["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let overrides: Vec<meshlet_proxy::config::Override> = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let name = e["name"].as_str().unwrap();
            let key = meshlet_defaults::keys::KEYS
                .iter()
                .find(|k| k.env() == name)?;
            Some(meshlet_proxy::config::Override {
                key: key.key,
                value: e["value"].as_str().unwrap().to_owned(),
                origin: name.to_owned(),
                yaml: key.yaml,
            })
        })
        .collect();
    let config = meshlet_proxy::config::Config::parse("", "test", &overrides).unwrap();
    // The proxy reads what the volume holds, where it is mounted, and asks the deployed issuer.
    match config.identity_source().unwrap() {
        meshlet_identity::Source::Issuer(issuer) => {
            assert_eq!(issuer.url.url, "https://meshlet-issuer.meshlet-system.svc");
            assert_eq!(
                issuer.token,
                std::path::Path::new(mount).join(token["path"].as_str().unwrap())
            );
            let bundle_item = &sources[1]["configMap"]["items"][0]["path"];
            assert_eq!(
                issuer.bundle,
                std::path::Path::new(mount).join(bundle_item.as_str().unwrap())
            );
        }
        other => panic!("the proxy would not ask the issuer: {other:?}"),
    }
}
