//! `meshlet issuer`: an HTTPS service in the cluster that signs short-lived X.509-SVIDs.
//!
//! A caller proves its service account with a projected token (audience `meshlet`, bound to its
//! pod), which the API server reviews (`token_review`); the SVID names exactly that service
//! account, whatever the CSR asks for (`csr`), and lives as long as the issuer says. The CA
//! comes from files, a mounted Secret (`authority`), made once by `bootstrap` when there is
//! none; the trust bundle is published to every namespace as a ConfigMap (`publish`) for the
//! sidecars to verify their peers and the issuer with. It also keeps the admission webhook's
//! serving certificate and `caBundle` (`webhook_tls`), so that deploy/ needs no hand-made Secret.
#![forbid(unsafe_code)]

pub mod authority;
pub mod bootstrap;
pub mod csr;
pub mod kube;
pub mod publish;
pub mod server;
pub mod token_review;
pub mod webhook_tls;

pub use server::{start, IssuerConfig, Running};
