#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| odi_net::fuzz::messages(data));
