//! Where the workload identity comes from, and what keeps it current: one type for every
//! source. A source gives its first identity ([`Source::first`]), then is followed
//! ([`Follower::follow`]): every update is validated whole and swapped into the store, and the
//! caller hears what each did through a callback (the proxy counts them).

use std::path::PathBuf;
use std::sync::Arc;

use crate::issuer_client::IssuerSource;
use crate::rotation::{self, Update};
use crate::source::{Identity, IdentityFiles, IdentityStore, LoadError};
use crate::workload_api::{self, SvidStream};

/// Where the identity comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Certificate, key and bundle files (a Secret or CSI volume): watched, re-read on SIGHUP
    /// and periodically.
    Files(IdentityFiles),
    /// The SPIFFE Workload API (the SPIRE agent) at this unix socket: its stream of updates.
    WorkloadApi(PathBuf),
    /// `meshlet issuer`: a key made in memory, an SVID asked for with the pod's token, renewed
    /// at about half its life.
    Issuer(IssuerSource),
}

/// A source that gave its first identity, ready to be followed.
pub struct Follower {
    trust_domain: String,
    from: Followed,
}

enum Followed {
    Files(IdentityFiles),
    WorkloadApi { socket: PathBuf, stream: SvidStream },
    Issuer(IssuerSource),
}

impl Source {
    /// Where the identity comes from, for people (`meshlet check`, the admin's `/identity`).
    pub fn describe(&self) -> String {
        match self {
            Source::Files(files) => format!("files ({})", files.cert.display()),
            Source::WorkloadApi(socket) => format!("SPIRE agent ({})", socket.display()),
            Source::Issuer(issuer) => format!("meshlet issuer ({})", issuer.url.url),
        }
    }

    /// The first identity: files must load now; the Workload API is waited for, with backoff,
    /// for as long as it takes.
    pub async fn first(self, trust_domain: &str) -> Result<(Identity, Follower), LoadError> {
        let (identity, from) = match self {
            Source::Files(files) => {
                let identity = Identity::load(&files, trust_domain, &crate::crypto_provider())?;
                rotation::warn_if_expiring(&identity);
                (identity, Followed::Files(files))
            }
            Source::WorkloadApi(socket) => {
                let (identity, stream) = workload_api::first_identity(&socket, trust_domain).await;
                (identity, Followed::WorkloadApi { socket, stream })
            }
            Source::Issuer(issuer) => (issuer.first(trust_domain).await, Followed::Issuer(issuer)),
        };
        let follower = Follower {
            trust_domain: trust_domain.to_owned(),
            from,
        };
        Ok((identity, follower))
    }
}

impl Follower {
    /// Keeps `store` current until the process ends; `on_update` hears what every update did.
    /// Fails only when the files cannot be watched.
    pub fn follow<F>(
        self,
        store: Arc<IdentityStore>,
        on_update: F,
    ) -> Result<tokio::task::JoinHandle<()>, String>
    where
        F: Fn(Update) + Send + 'static,
    {
        let trust_domain = self.trust_domain;
        match self.from {
            Followed::Files(files) => {
                let paths = [files.cert.clone(), files.key.clone(), files.bundle.clone()];
                let paths: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
                crate::watch::watch(&paths, move |trigger| {
                    on_update(rotation::reload(&store, &files, &trust_domain, trigger));
                })
            }
            Followed::WorkloadApi { socket, stream } => Ok(tokio::spawn(workload_api::follow(
                socket,
                stream,
                store,
                trust_domain,
                on_update,
            ))),
            Followed::Issuer(issuer) => {
                Ok(tokio::spawn(issuer.follow(store, trust_domain, on_update)))
            }
        }
    }
}
