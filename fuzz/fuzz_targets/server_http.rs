//! The signaling server's HTTP head parser.
//! The properties: `ma_webrtc_gateway::testkit::props::server_http` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::server_http;

fuzz_target!(|data: &[u8]| {
    server_http::check(data);
});
