//! Sidecar injection, one piece of code behind two faces: `meshlet inject` (manifests in,
//! manifests out) and `meshlet webhook` (AdmissionReview in, JSONPatch out).
//!
//! Read [`pod`] first: what injection adds to a pod and how it takes it away again. [`sidecar`]
//! builds the containers and volumes, [`probes`] moves the app's probes to the proxy,
//! [`settings`] turns annotations into typed settings, [`workload`] finds the pods inside
//! Kubernetes objects, [`manifest`] reads and writes YAML streams and [`admission`] answers
//! the API server.
#![forbid(unsafe_code)]

pub mod admission;
pub mod manifest;
pub mod pod;
pub mod probes;
pub mod settings;
pub mod sidecar;
pub mod workload;
pub mod yaml_out;

pub use settings::{IdentitySource, Settings, SidecarMode};
