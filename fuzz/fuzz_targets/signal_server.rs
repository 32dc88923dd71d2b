//! The signaling server fed operation sequences over several sockets and IPs.
//! The properties: `ma_webrtc_gateway::testkit::props::signal_server` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::signal_server;

fuzz_target!(|data: &[u8]| {
    signal_server::check(data);
});
