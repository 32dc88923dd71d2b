//! The signaling protocol (PROTOCOL.md §2).

pub mod client;
