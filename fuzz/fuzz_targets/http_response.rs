//! The image proxy's HTTP/1.1 response parser fed at arbitrary split points.
//! The properties: `ma_webrtc_gateway::testkit::props::http_response` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::http_response;

fuzz_target!(|data: &[u8]| {
    http_response::check(data);
});
