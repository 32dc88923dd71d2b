//! Proxy request parsing and the HTTP request it produces, re-parsed with httparse.
//! The properties: `ma_webrtc_gateway::testkit::props::proxy_request` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::proxy_request;

fuzz_target!(|data: &[u8]| {
    proxy_request::check(data);
});
