//! The PEM and SVID loaders read files and Workload API answers: never a panic, whatever the
//! bytes. The input is split into certificate, key and bundle at the first two NUL bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlet_identity::{crypto_provider, svid, Identity};

fuzz_target!(|data: &[u8]| {
    let _ = svid::check_leaf(data);
    let _ = svid::chain_not_after(&[data]);
    let mut parts = data.splitn(3, |b| *b == 0);
    let cert = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default();
    let bundle = parts.next().unwrap_or_default();
    let _ = Identity::from_pem(cert, key, bundle, "cluster.local", &crypto_provider());
});
