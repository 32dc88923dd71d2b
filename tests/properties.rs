//! The fuzz targets' properties on stable, bounded, in `cargo test` (issue 14, item 2).
//!
//! Each property is written once, in `ma_webrtc_gateway::testkit::props`; the cargo-fuzz
//! targets in `fuzz/` run the same `check` open-ended under libFuzzer. Here proptest feeds
//! each surface a bounded number of inputs: half random bytes, half a real message (the
//! surface's seeds, the same the fuzz corpora start from) with a few bytes overwritten,
//! inserted or deleted. A failure is shrunk to a small input; `PROPTEST_CASES` scales every
//! surface's count up or down.
//!
//! `cargo test --test properties -- --ignored write_fuzz_seeds` rewrites the fuzz targets'
//! seed corpora (`fuzz/corpus/<target>/`) from the seeds.

use std::path::Path;

use ma_webrtc_gateway::testkit::props::{Surface, SURFACES};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// An edit of a seed: at a position (modulo the length), overwrite, insert or delete a byte.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn apply(mut seed: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = seed.len();
        match *e {
            Edit::Set(i, b) if n > 0 => seed[i % n] = b,
            Edit::Insert(i, b) => seed.insert(i % (n + 1), b),
            Edit::Delete(i) if n > 0 => {
                seed.remove(i % n);
            }
            _ => {}
        }
    }
    seed
}

fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ];
    let mutated = (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit, 0..8),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits));
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..512), mutated]
}

/// Runs `surface`'s property on `cases` inputs (scaled by `PROPTEST_CASES` / 256 when set).
fn run(name: &str, cases: u32) {
    let surface = Surface::named(name).expect("surface");
    let cases = match std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        Some(n) => (u64::from(cases) * u64::from(n) / 256).max(1) as u32,
        None => cases,
    };
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let seeds = (surface.seeds)();
    // Every seed itself first: a real message must pass.
    for s in &seeds {
        (surface.check)(s);
    }
    let result = runner.run(&inputs(seeds), |data| {
        (surface.check)(&data);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

#[test]
fn http_response() {
    run("http_response", 1000);
}

#[test]
fn proxy_request() {
    run("proxy_request", 1000);
}

#[test]
fn chunk() {
    run("chunk", 1000);
}

#[test]
fn signaling_client() {
    run("signaling_client", 1000);
}

#[test]
fn signal_server() {
    run("signal_server", 1000);
}

#[test]
fn server_http() {
    run("server_http", 1000);
}

#[test]
fn udp() {
    run("udp", 1000);
}

#[test]
fn session() {
    run("session", 200);
}

#[test]
fn identity() {
    run("identity", 300);
}

#[test]
fn hello() {
    run("hello", 1000);
}

#[test]
fn turn() {
    run("turn", 2000);
}

#[test]
fn ice_source() {
    run("ice_source", 2000);
}

#[test]
fn every_surface_has_a_test_and_seeds() {
    let tested = [
        "http_response",
        "proxy_request",
        "chunk",
        "signaling_client",
        "signal_server",
        "server_http",
        "udp",
        "session",
        "identity",
        "hello",
        "turn",
        "ice_source",
    ];
    for s in SURFACES {
        assert!(tested.contains(&s.name), "{} has no property test", s.name);
        assert!(!(s.seeds)().is_empty(), "{} has no seeds", s.name);
    }
}

/// Writes every surface's seeds to `fuzz/corpus/<name>/seed-<n>` (run by hand when the
/// seeds change; the corpora are committed).
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for s in SURFACES {
        let dir = root.join(s.name);
        std::fs::create_dir_all(&dir).expect("create the corpus folder");
        for (i, seed) in (s.seeds)().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write a seed");
        }
    }
}
