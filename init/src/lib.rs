//! The init step of meshlet: the iptables rules that redirect a Pod's TCP traffic to the sidecar.
//!
//! The flow is `model` (what to capture, parsed from flags) → `render` (the exact
//! `iptables-restore` input) → `apply` (feed it to the chosen backend atomically). `backend`
//! decides between iptables-legacy and iptables-nft the way Istio settled on.
#![forbid(unsafe_code)]

pub mod apply;
pub mod backend;
pub mod model;
pub mod render;

pub use apply::{apply, cleanup, ApplyError, ApplyReport, Ipv6Mode};
pub use backend::{Backend, BackendChoice, Family};
pub use model::{
    parse_cidr_selection, parse_cidrs, parse_port_selection, parse_ports, CaptureConfig,
    CidrSelection, ParseError, PortRange, PortSelection,
};
