//! Inbound: a caller's connection to an app port, redirected to us, is identified, authorized
//! and passed to the app.
//!
//! Follow one connection: [`accept`] learns its original destination, which must pass the
//! [`destination`] rule, reads its first bytes ([`detect`]) and terminates mTLS; a pooled
//! connection's streams go through [`pooled_server`], each naming its own destination. Every
//! caller then enters the app through [`deliver`], the one way in: [`require_mesh`], [`policy`],
//! [`require_http`], the connection permit, the app connect, and the bytes or [`http`]. The
//! context all of them read, built once per proxy, is [`context::Inbound`].

pub mod accept;
pub mod app_clients;
pub mod context;
pub mod deliver;
pub mod destination;
pub mod detect;
pub mod head_timer;
pub mod http;
pub mod http_path;
pub mod local_addrs;
pub mod policy;
pub mod pooled_server;
pub mod require_http;
pub mod require_mesh;
