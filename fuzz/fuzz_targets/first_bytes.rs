//! The inbound classifier reads whatever a caller sends first: never a panic, and a verdict
//! that more bytes cannot take back once it is final.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlet_proxy::inbound::detect::{classify, Protocol};

fuzz_target!(|data: &[u8]| {
    let verdict = classify(data);
    if verdict != Protocol::Incomplete {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"more bytes");
        assert_eq!(
            classify(&longer),
            verdict,
            "a final verdict changed with more input"
        );
    }
});
