//! The admission webhook's decision, without the server: an AdmissionReview v1 request in, an
//! AdmissionReview response out, the injection as a JSONPatch against the Pod as received.
//!
//! Two entry points, one per webhook of `deploy/`'s MutatingWebhookConfiguration: `Namespace`
//! for pods of namespaces labelled `meshlet.io/inject=enabled` (injected unless the pod's
//! annotation says `false`), `Annotated` for pods anywhere else that ask with the annotation
//! `meshlet.io/inject: "true"`. Anything that cannot be injected is allowed with a warning:
//! the webhook never blocks a Pod.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::pod::{self, Outcome};
use crate::settings::{self, Settings, PREFIX};
use crate::sidecar;

/// Which webhook called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Namespace,
    Annotated,
}

/// Namespaces never injected, whatever their labels say.
const NEVER: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// A review that is not an AdmissionReview v1 request: the server answers 400.
#[derive(Debug, thiserror::Error)]
#[error("not an AdmissionReview v1 request: {0}")]
pub struct BadReview(String);

/// An AdmissionReview v1 request: what the webhook reads of it, parsed from the body. Every
/// other field (`oldObject`, `userInfo`, …) is skipped unread, so it costs no memory.
#[derive(Debug)]
pub struct Review(Request);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Debug, Deserialize)]
struct Request {
    uid: String,
    kind: Option<ResourceKind>,
    #[serde(default)]
    namespace: String,
    operation: Option<String>,
    object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ResourceKind {
    kind: String,
}

impl Review {
    /// Parses a request body; anything but an AdmissionReview v1 request with a uid is refused.
    pub fn parse(body: &[u8]) -> Result<Review, BadReview> {
        let envelope: Envelope =
            serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
        if envelope.api_version != "admission.k8s.io/v1" || envelope.kind != "AdmissionReview" {
            return Err(BadReview(format!(
                "apiVersion/kind {}/{}",
                envelope.api_version, envelope.kind
            )));
        }
        envelope
            .request
            .map(Review)
            .ok_or_else(|| BadReview("no request".into()))
    }

    /// The request's namespace, pod name and generateName, and uid, for the log.
    pub fn names(&self) -> (&str, &str, &str, &str) {
        let req = &self.0;
        let meta = req.object.as_ref().and_then(|o| o.get("metadata"));
        let field = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        (
            &req.namespace,
            field("name"),
            field("generateName"),
            &req.uid,
        )
    }
}

/// The response to one AdmissionReview request.
pub fn review(review: &Review, entry: Entry, defaults: &Settings) -> Value {
    let req = &review.0;
    let (patch, warnings) = decide(req, entry, defaults);
    let mut response = json!({"uid": req.uid, "allowed": true});
    if let Some(patch) = patch {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// The patch (serialized JSONPatch) if the pod is to change, and the warnings for the user.
fn decide(req: &Request, entry: Entry, defaults: &Settings) -> (Option<Vec<u8>>, Vec<String>) {
    let skip = |why: String| (None, vec![format!("meshlet: sidecar not injected: {why}")]);
    let quiet = || (None, vec![]);
    let kind = req.kind.as_ref().map(|k| k.kind.as_str());
    if kind != Some("Pod") {
        return skip(format!(
            "only Pods are injected here, not {}",
            kind.unwrap_or("?")
        ));
    }
    if req.operation.as_deref().is_some_and(|op| op != "CREATE") {
        return quiet();
    }
    let namespace = req.namespace.as_str();
    if NEVER.contains(&namespace) {
        return quiet();
    }
    let Some(original) = &req.object else {
        return skip("the request holds no Pod".into());
    };
    let mut pod = original.clone();
    let Some(obj) = pod.as_object_mut() else {
        return skip("the Pod is not an object".into());
    };
    let mut meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    if pod::is_injected(&meta) {
        return quiet();
    }
    let asked = pod::annotations(&meta)
        .map_err(|e| e.to_string())
        .and_then(|a| settings::inject_switch(&a).map_err(|e| e.to_string()));
    let asked = match asked {
        Ok(asked) => asked,
        Err(e) => return skip(e),
    };
    match (entry, asked) {
        (_, Some(false)) => return quiet(),
        (Entry::Annotated, None) => return quiet(),
        _ => {}
    }
    let Some(spec) = obj.get_mut("spec") else {
        return skip("the Pod has no spec".into());
    };
    match pod::inject(&mut meta, spec, defaults) {
        Ok(Outcome::Injected { warnings }) => {
            obj.insert("metadata".into(), meta);
            let patch = json_patch::diff(original, &pod);
            let mut warnings: Vec<String> = warnings
                .into_iter()
                .map(|w| format!("meshlet: {w}"))
                .collect();
            // The webhook cannot see Secrets (it is given no access to them), so it says what
            // the pod needs: without it the pod waits at Init, and only the kubelet's event
            // names the Secret.
            if let Some(secret) = identity_secret(&pod) {
                warnings.push(format!(
                    "meshlet: the sidecar's identity is the Secret {secret} in namespace {namespace} (tls.crt, tls.key, ca.crt); until it exists the Pod waits at Init: create it with meshlet cert issue and kubectl create secret generic"
                ));
            }
            match serde_json::to_vec(&patch) {
                Ok(bytes) => (Some(bytes), warnings),
                Err(e) => skip(format!("cannot serialize the patch: {e}")),
            }
        }
        Ok(Outcome::Unchanged { reason }) => skip(reason),
        Err(e) => skip(format!(
            "{e} (fix the {PREFIX} annotations and recreate the Pod)"
        )),
    }
}

/// The Secret an injected pod's identity volume reads, if it is one.
fn identity_secret(pod: &Value) -> Option<&str> {
    pod.get("spec")?
        .get("volumes")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(sidecar::IDENTITY_VOLUME))?
        .get("secret")?
        .get("secretName")?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{IdentitySource, SidecarMode};

    fn defaults() -> Settings {
        Settings::defaults(
            "meshlet:test",
            SidecarMode::Native,
            IdentitySource::Secret(None),
        )
    }

    fn request(namespace: &str, pod: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0b3c5c4e-8d3a-4f0e-9d52-6a1f9b0c1d2e",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "object": pod,
            }
        })
    }

    fn pod(annotations: Value, host_network: bool) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "echo-", "annotations": annotations},
            "spec": {
                "hostNetwork": host_network,
                "serviceAccountName": "echo",
                "containers": [{"name": "echo", "image": "echo"}],
            }
        })
    }

    fn parsed(req: &Value) -> Review {
        Review::parse(&serde_json::to_vec(req).unwrap()).unwrap()
    }

    /// (patched pod if any, warnings).
    fn answer(entry: Entry, req: &Value) -> (Option<Value>, Vec<String>) {
        let resp = review(&parsed(req), entry, &defaults());
        let r = &resp["response"];
        assert_eq!(r["uid"], req["request"]["uid"]);
        assert_eq!(r["allowed"], true, "the webhook never blocks a Pod");
        let warnings = r["warnings"]
            .as_array()
            .map(|w| w.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        let patched = r.get("patch").map(|p| {
            assert_eq!(r["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p.as_str().unwrap())
                .unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            let mut pod = req["request"]["object"].clone();
            json_patch::patch(&mut pod, &patch).unwrap();
            pod
        });
        (patched, warnings)
    }

    /// The images of every container and init container of `pod`.
    fn images(pod: &Value) -> Vec<String> {
        ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["image"].as_str().map(str::to_owned))
            .collect()
    }

    /// The pod of `req` with the review response's patch applied.
    fn patched_by(resp: &Value, req: &Value) -> Value {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(resp["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut pod = req["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap();
        pod
    }

    #[test]
    fn a_pod_author_cannot_choose_the_image_of_the_privileged_init_container() {
        let evil = json!({"meshlet.io/image": "attacker/rootkit:1"});
        let req = request("default", pod(evil, false));
        let webhook = Settings {
            allowed_images: Some(vec!["meshlet:allowed".into()]),
            ..defaults()
        };

        let resp = review(&parsed(&req), Entry::Namespace, &webhook);

        let got = images(&patched_by(&resp, &req));
        assert!(!got.iter().any(|i| i.contains("rootkit")), "{got:?}");
        assert!(got.iter().any(|i| i == "meshlet:test"), "{got:?}");
        let warnings = resp["response"]["warnings"].to_string();
        assert!(
            warnings.contains("attacker/rootkit:1") && warnings.contains("ignored"),
            "{warnings}"
        );
        // An image the operator allows is honoured.
        let allowed = json!({"meshlet.io/image": "meshlet:allowed"});
        let req = request("default", pod(allowed, false));
        let resp = review(&parsed(&req), Entry::Namespace, &webhook);
        assert!(images(&patched_by(&resp, &req))
            .iter()
            .any(|i| i == "meshlet:allowed"));
    }

    #[test]
    fn admission_names_the_identity_secret_the_pod_waits_for() {
        let req = request("shop", pod(json!({}), false));

        let (_, warnings) = answer(Entry::Namespace, &req);

        let note = warnings
            .iter()
            .find(|w| w.contains("Secret echo-svid"))
            .unwrap_or_else(|| panic!("no note on the identity Secret: {warnings:?}"));
        assert!(
            note.contains("namespace shop") && note.contains("meshlet cert issue"),
            "{note}"
        );
        // The API server may cut longer warnings.
        assert!(note.len() <= 256, "{} characters: {note}", note.len());
        // A pod whose identity comes from a CSI driver waits for no Secret.
        let csi = request(
            "shop",
            pod(json!({"meshlet.io/identity": "csi-spiffe"}), false),
        );
        let (patched, warnings) = answer(Entry::Namespace, &csi);
        assert!(patched.is_some());
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_pod_of_an_opted_in_namespace_is_patched_into_what_inject_makes() {
        let req = request("default", pod(json!({}), false));
        let (patched, warnings) = answer(Entry::Namespace, &req);
        let patched = patched.expect("a patch");
        assert!(
            warnings.len() == 1 && warnings[0].contains("Secret echo-svid"),
            "only the note on the identity Secret: {warnings:?}"
        );
        let mut expected = req["request"]["object"].clone();
        let mut meta = expected["metadata"].clone();
        pod::inject(&mut meta, &mut expected["spec"], &defaults()).unwrap();
        expected["metadata"] = meta;
        assert_eq!(patched, expected);
        // Reinvocation: an injected pod is never injected twice.
        let again = request("default", patched);
        assert_eq!(answer(Entry::Namespace, &again), (None, vec![]));
    }

    #[test]
    fn opted_out_kube_system_and_unannotated_pods_pass_untouched_and_silently() {
        let out = json!({"meshlet.io/inject": "false"});
        assert_eq!(
            answer(Entry::Namespace, &request("default", pod(out, false))),
            (None, vec![])
        );
        assert_eq!(
            answer(
                Entry::Namespace,
                &request("kube-system", pod(json!({}), false))
            ),
            (None, vec![])
        );
        assert_eq!(
            answer(Entry::Annotated, &request("default", pod(json!({}), false))),
            (None, vec![])
        );
        let asked = json!({"meshlet.io/inject": "true"});
        assert!(
            answer(Entry::Annotated, &request("default", pod(asked, false)))
                .0
                .is_some()
        );
    }

    #[test]
    fn what_cannot_be_injected_is_allowed_with_a_warning() {
        let (patched, warnings) =
            answer(Entry::Namespace, &request("default", pod(json!({}), true)));
        assert!(patched.is_none());
        assert!(warnings[0].contains("host network"), "{warnings:?}");
        let bad = json!({"meshlet.io/proxy-cpu-request": "lots"});
        let (patched, warnings) = answer(Entry::Namespace, &request("default", pod(bad, false)));
        assert!(patched.is_none());
        assert!(
            warnings[0].contains("meshlet.io/proxy-cpu-request"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_document_that_is_not_an_admission_review_is_refused() {
        let refused = |v: Value| Review::parse(&serde_json::to_vec(&v).unwrap()).is_err();
        assert!(refused(json!({"kind": "Pod"})));
        assert!(refused(
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}})
        ));
        assert!(refused(
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
        ));
        assert!(refused(json!([0, 0, 0])));
    }

    #[test]
    fn a_review_holding_fields_the_webhook_does_not_read_is_parsed_and_logged_by_its_own() {
        let mut req = request("default", pod(json!({}), false));
        req["request"]["oldObject"] = json!({"huge": [1, 2, 3]});
        req["request"]["userInfo"] = json!({"username": "system:serviceaccount:kube-system:rs"});
        let review = parsed(&req);
        assert_eq!(
            review.names(),
            (
                "default",
                "",
                "echo-",
                req["request"]["uid"].as_str().unwrap()
            )
        );
    }
}
