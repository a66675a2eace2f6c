//! A small lab of "pods" (network namespaces on a private bridge) for the demo, the end-to-end
//! tests and the benchmark, plus the demo's HTTP app.
//!
//! Everything lives in namespaces the lab creates, the bridge included, so nothing touches the
//! host's network; dropping the [`netns::Lab`] removes it all.
#![forbid(unsafe_code)]

pub mod app;
pub mod demo;
pub mod mesh;
pub mod netns;
