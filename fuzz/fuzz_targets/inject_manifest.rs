//! inject's manifest reader and writer: any text is refused or read, never a panic or a hang;
//! what it reads, written out and read again, is the same value (the writer's quoting keeps
//! every scalar what it was).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlet_inject::manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(docs) = manifest::parse(text) else {
        return;
    };
    let written = manifest::render(&docs).expect("a parsed manifest renders");
    let again = manifest::parse(&written).expect("what inject writes, it reads");
    assert_eq!(again, docs, "{written}");
});
