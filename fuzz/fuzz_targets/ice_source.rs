//! The ICE server source on arbitrary answers from Home Assistant or an ICE servers URL.
//! The properties: `ma_webrtc_gateway::testkit::props::ice_source` (shared with
//! tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::ice_source;

fuzz_target!(|data: &[u8]| {
    ice_source::check(data);
});
