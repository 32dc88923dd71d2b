//! UDP routing and STUN parsing on arbitrary datagrams.
//! The properties: `ma_webrtc_gateway::testkit::props::udp` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::udp;

fuzz_target!(|data: &[u8]| {
    udp::check(data);
});
