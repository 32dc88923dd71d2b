//! The TURN client and its stream framing on arbitrary bytes from a TURN server
//! (`turn::client`, `turn::framing`; docs/design.md#turn-client).
//!
//! Input: one client (over UDP or over a stream, from the first byte), started, then
//! operations until the bytes run out: a message from the server (arbitrary, or a STUN
//! answer with our last transaction id and an arbitrary class, error code and attributes), a
//! permission or a send to one of 8 peers, the clock moving, a release; over a stream the
//! server's bytes go through a [`StreamFramer`] in arbitrary pieces first.
//!
//! Properties:
//! - nothing panics, whatever the server sends;
//! - every transmit is one well-formed STUN or ChannelData message of at most
//!   [`MAX_FRAME`] bytes, and its length field matches;
//! - the framer gives only messages of at most [`MAX_FRAME`] and holds at most one incomplete
//!   message plus the last piece pushed;
//! - once the client says it is done (failed or released), it asks for nothing more.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{chunk_bytes, Input};
use crate::machine::{Machine, Next};
use crate::turn::framing::{StreamFramer, MAX_FRAME};
use crate::turn::{TurnClient, TurnConfig, TurnOutput};

fn peer(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i % 8)), 40_000)
}

/// Drain the client; check each transmit; the last STUN transaction id seen.
fn drain(client: &mut TurnClient, stream: bool, last_txid: &mut [u8; 12]) {
    loop {
        match client.poll_output() {
            Next::Output(TurnOutput::Transmit(bytes)) => {
                assert!(bytes.len() <= MAX_FRAME, "a {}-byte transmit", bytes.len());
                assert!(bytes.len() >= 4, "a {}-byte transmit", bytes.len());
                let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
                match bytes[0] >> 6 {
                    0 => {
                        assert_eq!(bytes.len(), 20 + len, "STUN length field");
                        last_txid.copy_from_slice(&bytes[8..20]);
                    }
                    1 => {
                        let padded = if stream { len.next_multiple_of(4) } else { len };
                        assert_eq!(bytes.len(), 4 + padded, "ChannelData length field");
                    }
                    _ => panic!("neither STUN nor ChannelData: {:02x?}", &bytes[..4]),
                }
            }
            Next::Output(TurnOutput::Event(_)) => {}
            Next::Timeout(_) => return,
        }
    }
}

/// A STUN answer to transaction `txid`: `class` picks success or error, then attributes as
/// given (type, value), padded.
fn answer(method_class: u16, txid: &[u8; 12], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut m = method_class.to_be_bytes().to_vec();
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    m.extend_from_slice(txid);
    m.extend_from_slice(&body);
    m
}

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let stream = input.bool();
    let mut now = Instant::now();
    let mut client = TurnClient::new(now, TurnConfig::default(), "user", "pass", stream);
    let mut framer = StreamFramer::default();
    let mut txid = [0u8; 12];
    client.handle_start(now);
    drain(&mut client, stream, &mut txid);
    while !input.is_empty() {
        let op = input.u8();
        let mut server_bytes = |client: &mut TurnClient, bytes: &[u8], now: Instant| {
            if !stream {
                client.handle_input(now, bytes);
                return;
            }
            framer.push(bytes);
            assert!(framer.buffered() <= MAX_FRAME + bytes.len());
            while let Ok(Some(frame)) = framer.next_frame() {
                assert!(frame.len() <= MAX_FRAME);
                let frame = frame.to_vec();
                client.handle_input(now, &frame);
            }
        };
        match op % 6 {
            0 => server_bytes(&mut client, input.chunk(1500), now),
            1 => {
                // Allocate / Refresh / CreatePermission / ChannelBind answers, success or error.
                let method = [0x0003u16, 0x0004, 0x0008, 0x0009][usize::from(input.u8() % 4)];
                let class = [0x0100u16, 0x0110][usize::from(input.u8() % 2)];
                let mut attrs = Vec::new();
                for _ in 0..input.u8() % 5 {
                    let t = [0x0009u16, 0x0014, 0x0015, 0x0016, 0x0020, 0x000D, 0x0008]
                        [usize::from(input.u8() % 7)];
                    attrs.push((t, input.chunk(64).to_vec()));
                }
                let msg = answer(method | class, &txid, &attrs);
                server_bytes(&mut client, &msg, now);
            }
            2 => client.handle_permit(now, peer(input.u8()).ip()),
            3 => {
                let p = peer(input.u8());
                let _ = client.handle_send(now, p, input.chunk(1200));
            }
            4 => {
                now += Duration::from_millis(u64::from(input.u16()) * 10);
                client.handle_timeout(now);
            }
            _ => client.handle_release(now),
        }
        drain(&mut client, stream, &mut txid);
        if client.is_done() {
            client.handle_timeout(now + Duration::from_secs(3600));
            let mut none = [0u8; 12];
            if let Next::Output(TurnOutput::Transmit(_)) = client.poll_output() {
                panic!("a finished client still transmits");
            }
            drain(&mut client, stream, &mut none);
        }
    }
}

/// Seeds: a 401 with realm and nonce, a success with addresses, an error, over UDP and a
/// stream.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for stream in [0u8, 1] {
        let mut s = vec![stream];
        // 401 to the Allocate: ERROR-CODE 401, REALM, NONCE.
        s.extend_from_slice(&[1, 0, 1, 3, 0, 2]);
        chunk_bytes(&mut s, &[0, 0, 4, 1]);
        s.push(1);
        chunk_bytes(&mut s, b"lab.example");
        s.push(2);
        chunk_bytes(&mut s, b"nonce-1234");
        // A success with XOR-RELAYED-ADDRESS and LIFETIME.
        s.extend_from_slice(&[1, 0, 0, 2, 3]);
        chunk_bytes(&mut s, &[0, 1, 0x9a, 0x8b, 0xe1, 0x12, 0xa5, 0x43]);
        s.push(5);
        chunk_bytes(&mut s, &[0, 0, 2, 88]);
        // Permission, send, time, raw bytes, release.
        s.extend_from_slice(&[2, 3, 3, 3]);
        chunk_bytes(&mut s, b"hello");
        s.extend_from_slice(&[4, 0, 0, 100]);
        s.push(0);
        chunk_bytes(&mut s, &[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        s.push(5);
        out.push(s);
    }
    out
}
