//! Identity loading from arbitrary PEM.
//! The properties: `ma_webrtc_gateway::testkit::props::identity` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::identity;

fuzz_target!(|data: &[u8]| {
    identity::check(data);
});
