//! Swapping a new identity in: a set that does not load and validate as a whole is never
//! swapped in, and every update says what it did ([`Update`]) to whoever follows the source.

use std::time::SystemTime;

use tracing::{debug, info, warn};

use crate::source::{Identity, IdentityFiles, IdentityStore};

/// What prompted a reload: an operator's SIGHUP deserves an answer even when nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    FileChange,
    Sighup,
    Periodic,
    WorkloadApi,
    /// The issuer was asked for a new SVID because half its life had passed.
    Renewal,
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Trigger::FileChange => "file change",
            Trigger::Sighup => "SIGHUP",
            Trigger::Periodic => "periodic check",
            Trigger::WorkloadApi => "Workload API update",
            Trigger::Renewal => "renewal",
        }
    }
}

/// What an update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// A new identity is in use.
    Applied,
    /// The same identity as before.
    Unchanged,
    /// It did not load or validate; the current identity stays.
    Refused,
    /// The source could not be asked (the issuer is unreachable or refused); the current
    /// identity stays and the asking goes on.
    Unavailable,
}

/// Reads the files again and swaps them in if they are valid and different.
pub fn reload(
    store: &IdentityStore,
    files: &IdentityFiles,
    trust_domain: &str,
    trigger: Trigger,
) -> Update {
    let provider = crate::crypto_provider();
    let loaded = Identity::load(files, trust_domain, &provider).map_err(|e| e.to_string());
    apply(store, loaded, trigger)
}

/// Swaps in a freshly loaded identity when it differs from the current one; a load that failed
/// is counted and logged, and the current identity stays.
pub fn apply(store: &IdentityStore, loaded: Result<Identity, String>, trigger: Trigger) -> Update {
    let why = trigger.label();
    match loaded {
        Ok(new) => {
            if new.same_as(&store.current()) {
                if trigger == Trigger::Sighup {
                    info!(why, "identity files reloaded: unchanged");
                } else {
                    debug!(why, "identity unchanged");
                }
                return Update::Unchanged;
            }
            let id = new.id.clone();
            let expires = crate::svid::fmt_time(new.not_after);
            warn_if_expiring(&new);
            store.replace(new);
            info!(why, %id, %expires, "identity rotated: new handshakes use the new certificate and bundle");
            Update::Applied
        }
        Err(e) => {
            warn!(why, error = %e, "identity update refused; keeping the current certificate and bundle");
            Update::Refused
        }
    }
}

/// Warns when less than a fifth of the certificate's lifetime is left.
pub fn warn_if_expiring(identity: &Identity) {
    let now = SystemTime::now();
    let total = identity
        .not_after
        .duration_since(identity.not_before)
        .unwrap_or_default();
    let left = identity.not_after.duration_since(now).unwrap_or_default();
    if left < total / 5 {
        warn!(id = %identity.id, seconds_left = left.as_secs(), "the SVID is close to expiry and has not been renewed");
    }
}
