//! Outbound: an app's connection, redirected to us, leaves as mTLS to the peer's proxy (or
//! plain, per `outbound.mtls` and `outbound.destinations`).
//!
//! Follow one connection: [`accept`] learns its original destination ([`prevent_loop`]), the
//! [`routes`] decide the mode, and the [`connector`] opens the path to the peer (the app's
//! first bytes ride ahead of a pooled stream's answer, [`first_bytes`]): a stream over a pooled
//! connection ([`pooled_client`], each one a [`pooled_conn`]; a Service address's are
//! samples of the node's choice, balanced by [`service`]) or an mTLS connection of its own (`dial`), chosen per destination by [`bulk`]. In
//! `auto` mode a silent destination's address is asked about meshlet's port ([`mesh_port`]).
//! The context they read, built once per proxy, is [`accept::Outbound`].

pub mod accept;
pub mod bulk;
pub mod connector;
pub mod first_bytes;
pub mod mesh_port;
pub mod pooled_client;
pub mod pooled_conn;
pub mod prevent_loop;
pub mod routes;
pub mod service;
