//! The gateway's signaling client fed message sequences.
//! The properties: `ma_webrtc_gateway::testkit::props::signaling_client` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::signaling_client;

fuzz_target!(|data: &[u8]| {
    signaling_client::check(data);
});
