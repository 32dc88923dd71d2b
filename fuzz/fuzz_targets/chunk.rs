//! `__chunk__` framing: round trip at any limit, reassembly of arbitrary frames under its caps.
//! The properties: `ma_webrtc_gateway::testkit::props::chunk` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::chunk;

fuzz_target!(|data: &[u8]| {
    chunk::check(data);
});
