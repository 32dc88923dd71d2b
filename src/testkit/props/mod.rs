//! The properties of every input surface, each written once and run two ways: by the
//! cargo-fuzz targets in `fuzz/` (libFuzzer, nightly, open-ended) and by the bounded property
//! tests in `tests/properties.rs` (proptest, stable, in `cargo test`).
//!
//! Each module is one surface and has the same face:
//! - `check(data: &[u8])` reads an input from arbitrary bytes (through [`Input`]) and panics
//!   when a property does not hold: a panic is a finding, in either runner;
//! - `seeds() -> Vec<Vec<u8>>` gives inputs in that module's byte format built from real
//!   messages (the protocol's examples, what the tests send): the fuzz targets' committed
//!   corpora (`fuzz/corpus/<target>/`) are written from them, and the property tests mutate
//!   them as well as trying random bytes.
//!
//! Bad input must get a clear error and never a panic, and every buffer stays bounded
//! (docs/design.md); the properties say what "right" means beyond that for each surface.

pub mod chunk;
pub mod hello;
pub mod http_response;
pub mod ice_source;
pub mod identity;
pub mod proxy_request;
pub mod server_http;
pub mod session;
pub mod signal_server;
pub mod signaling_client;
pub mod turn;
pub mod udp;

/// Every surface: its name (the fuzz target's and the corpus folder's), its check, its seeds.
pub const SURFACES: &[Surface] = &[
    Surface::new("http_response", http_response::check, http_response::seeds),
    Surface::new("proxy_request", proxy_request::check, proxy_request::seeds),
    Surface::new("chunk", chunk::check, chunk::seeds),
    Surface::new(
        "signaling_client",
        signaling_client::check,
        signaling_client::seeds,
    ),
    Surface::new("signal_server", signal_server::check, signal_server::seeds),
    Surface::new("server_http", server_http::check, server_http::seeds),
    Surface::new("udp", udp::check, udp::seeds),
    Surface::new("session", session::check, session::seeds),
    Surface::new("identity", identity::check, identity::seeds),
    Surface::new("hello", hello::check, hello::seeds),
    Surface::new("turn", turn::check, turn::seeds),
    Surface::new("ice_source", ice_source::check, ice_source::seeds),
];

/// One input surface.
#[derive(Clone, Copy)]
pub struct Surface {
    pub name: &'static str,
    pub check: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

impl Surface {
    const fn new(name: &'static str, check: fn(&[u8]), seeds: fn() -> Vec<Vec<u8>>) -> Surface {
        Surface { name, check, seeds }
    }

    /// The surface called `name`.
    pub fn named(name: &str) -> Option<Surface> {
        SURFACES.iter().find(|s| s.name == name).copied()
    }
}

/// Structured choices read from fuzz bytes, front to back. Runs dry gracefully: past the end,
/// numbers are 0 and slices empty, so every byte string is a valid input.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// At most `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed slice (a big-endian `u16` length, then that many bytes, at most `max`).
    pub fn chunk(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(self.u16()) % (max + 1);
        self.take(n)
    }

    /// [`Input::chunk`] as text (invalid UTF-8 replaced).
    pub fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.chunk(max)).into_owned()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Encoding for [`Input::chunk`]: the length prefix and the bytes (for seeds).
pub fn chunk_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(n)]);
}
