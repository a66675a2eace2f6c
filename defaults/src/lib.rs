//! The defaults that the capture rules (`meshlet init`), the proxy, the injector and the lab must
//! agree on, defined once. Each can be changed by flag or configuration; the two sides must then
//! be given the same values.
#![forbid(unsafe_code)]

/// The proxy's uid: its own connections are exempt from capture.
pub const PROXY_UID: u32 = 1337;
/// Where captured inbound connections are redirected.
pub const INBOUND_PORT: u16 = 15006;
/// Where captured outbound connections are redirected.
pub const OUTBOUND_PORT: u16 = 15001;
/// Admin and health (`/live`, `/ready`, `/metrics`); never captured.
pub const ADMIN_PORT: u16 = 15021;
