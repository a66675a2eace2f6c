//! What every pod can send the issuer: any bytes as a CSR. It must never panic, and whatever it
//! accepts must ask for nothing but the caller's own SVID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlet_identity::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(caller) = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web") else {
        return;
    };
    let _ = meshlet_issuer::csr::accept(data, &caller);
});
