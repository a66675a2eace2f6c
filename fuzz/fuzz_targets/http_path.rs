//! The HTTP path normalizer: never a panic; what it accepts is normalized (no dot segments, no
//! empty segments), the path sent to the app normalizes to the very path policy matched, and
//! no percent sign survives decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlet_proxy::inbound::http_path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = normalize(target) else {
        return;
    };
    assert!(n.path.starts_with('/'));
    assert!(!n.path.contains("//"), "{:?} -> {:?}", target, n.path);
    assert!(
        n.path.split('/').all(|s| s != "." && s != ".."),
        "{:?}",
        n.path
    );
    assert!(
        !n.path.contains('%'),
        "a percent sign survived: {:?}",
        n.path
    );
    let again = normalize(&n.wire).expect("the app's path normalizes");
    assert_eq!(
        again.path, n.path,
        "the app would read another path than policy matched"
    );
    assert!(
        n.wire
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#'),
        "not a plain request-line path: {:?}",
        n.wire
    );
});
