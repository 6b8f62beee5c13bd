//! Any string as a variant key or a queue message: a typed error or a value whose
//! canonical form parses back to itself.
#![no_main]

use edgethumb::VariantKey;
use edgethumb::job::Job;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = VariantKey::parse(text) {
        let canonical = key.canonical_key();
        let again = VariantKey::parse(&canonical)
            .unwrap_or_else(|e| panic!("canonical key {canonical:?} does not parse: {e}"));
        assert_eq!(again.canonical_key(), canonical);
    }
    if let Ok(job) = Job::parse(text) {
        let again = Job::parse(&job.to_json())
            .unwrap_or_else(|e| panic!("re-serialised job does not parse: {e}"));
        assert_eq!(again.to_json(), job.to_json());
    }
});
