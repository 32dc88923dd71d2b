//! The TURN client and its stream framing on arbitrary bytes from a TURN server.
//! The properties: `ma_webrtc_gateway::testkit::props::turn` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::turn;

fuzz_target!(|data: &[u8]| {
    turn::check(data);
});
