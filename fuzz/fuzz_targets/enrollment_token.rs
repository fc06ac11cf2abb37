#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vitals_fuzz_targets::enrollment_token(data));
