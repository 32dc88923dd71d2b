//! The guest's Sendspin `client/hello` rewriter.
//! The properties: `ma_webrtc_gateway::testkit::props::hello` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::hello;

fuzz_target!(|data: &[u8]| {
    hello::check(data);
});
