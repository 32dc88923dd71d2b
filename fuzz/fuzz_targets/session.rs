//! SDP offers, candidates and datagrams through a PeerSession.
//! The properties: `ma_webrtc_gateway::testkit::props::session` (shared with tests/properties.rs).
//!
//! PeerSession catches str0m's panics (the session closes, the gateway goes on), but
//! libFuzzer's panic hook aborts on every panic, caught or not. Here the hook only counts
//! and prints the first few; a panic that escapes the session aborts: that is the finding.
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use ma_webrtc_gateway::testkit::props::session;

static CAUGHT: AtomicU64 = AtomicU64::new(0);

fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| {
            if CAUGHT.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!("panic (caught by the session, if it does not abort): {info}");
            }
        }));
    },
    |data: &[u8]| {
        if std::panic::catch_unwind(|| session::check(data)).is_err() {
            std::process::abort();
        }
    }
);
