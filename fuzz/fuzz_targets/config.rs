//! The configuration loader: any text is either a configuration or a one-line refusal naming
//! a key, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlet_proxy::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, "fuzz.yaml", &[]) {
        assert!(!e.key.is_empty());
        assert!(!e.to_string().contains('\n') || e.reason.contains('\n'));
    }
});
