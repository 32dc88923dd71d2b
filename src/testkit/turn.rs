//! A TURN server stand-in for in-memory tests: one allocation with long-term credentials
//! (401 first), permissions, channels, Send and Data indications, ChannelData, Refresh. It
//! relays between its client (the gateway) and peers, so a session can run through it with a
//! simulated clock.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::turn::framing::{channel_data, parse_channel_data};
use crate::turn::stun::{
    long_term_key, message_type, parse_address, Class, Message, MessageBuilder,
    ATTR_CHANNEL_NUMBER, ATTR_DATA, ATTR_ERROR_CODE, ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM,
    ATTR_USERNAME, ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS,
};

const REALM: &str = "standin.example";
const NONCE: &[u8] = b"standin-nonce";

/// What the stand-in sends: to its client, or from the relay address to a peer.
#[derive(Debug, Default)]
pub struct TurnSends {
    pub to_client: Vec<Vec<u8>>,
    pub to_peers: Vec<(SocketAddr, Vec<u8>)>,
}

#[derive(Debug)]
pub struct TurnStandin {
    /// Where the server listens.
    pub server: SocketAddr,
    /// The relayed address it hands out.
    pub relay: SocketAddr,
    key: [u8; 16],
    username: String,
    /// The client's address once it allocated.
    client: Option<SocketAddr>,
    permissions: HashSet<IpAddr>,
    channels: HashMap<u16, SocketAddr>,
    /// Datagrams relayed each way: (client → peers, peers → client).
    pub relayed: (u64, u64),
    /// Datagrams from peers dropped for lack of a permission.
    pub refused: u64,
    /// Refresh requests with lifetime 0 seen.
    pub released: u64,
}

impl TurnStandin {
    pub fn new(server: SocketAddr, relay: SocketAddr, username: &str, password: &str) -> Self {
        TurnStandin {
            server,
            relay,
            key: long_term_key(username, REALM, password),
            username: username.to_string(),
            client: None,
            permissions: HashSet::new(),
            channels: HashMap::new(),
            relayed: (0, 0),
            refused: 0,
            released: 0,
        }
    }

    /// A message from the client at `from`.
    pub fn from_client(&mut self, from: SocketAddr, bytes: &[u8]) -> TurnSends {
        let mut out = TurnSends::default();
        if let Some((ch, data)) = parse_channel_data(bytes) {
            if let Some(peer) = self.channels.get(&ch) {
                self.relayed.0 += 1;
                out.to_peers.push((*peer, data.to_vec()));
            }
            return out;
        }
        let Some(m) = Message::parse(bytes) else {
            return out;
        };
        if m.class() == Class::Indication {
            // Send.
            let (Some(peer), Some(data)) =
                (m.xor_address(ATTR_XOR_PEER_ADDRESS), m.attr(ATTR_DATA))
            else {
                return out;
            };
            if self.permissions.contains(&peer.ip()) {
                self.relayed.0 += 1;
                out.to_peers.push((peer, data.to_vec()));
            }
            return out;
        }
        let error = |code: u16| {
            MessageBuilder::new(message_type(m.method(), Class::Error), &m.txid)
                .attr(
                    ATTR_ERROR_CODE,
                    &[0, 0, (code / 100) as u8, (code % 100) as u8],
                )
                .attr(ATTR_REALM, REALM.as_bytes())
                .attr(ATTR_NONCE, NONCE)
                .finish()
        };
        let authentic = m.attr(ATTR_USERNAME) == Some(self.username.as_bytes())
            && m.attr(ATTR_NONCE) == Some(NONCE)
            && m.check_integrity(&self.key);
        if !authentic {
            out.to_client.push(error(401));
            return out;
        }
        let ok = MessageBuilder::new(message_type(m.method(), Class::Success), &m.txid);
        let ok = match m.method() {
            0x0003 => {
                self.client = Some(from);
                ok.xor_address(ATTR_XOR_RELAYED_ADDRESS, self.relay)
                    .xor_address(ATTR_XOR_MAPPED_ADDRESS, from)
                    .attr(ATTR_LIFETIME, &600u32.to_be_bytes())
            }
            0x0004 => {
                let lifetime = m.attr(ATTR_LIFETIME).unwrap_or(&[0, 0, 2, 88]);
                if lifetime == [0, 0, 0, 0] {
                    self.released += 1;
                }
                ok.attr(ATTR_LIFETIME, lifetime)
            }
            0x0008 => {
                // The permission's port is 0: read the address with a port put in.
                let Some(mut v) = m.attr(ATTR_XOR_PEER_ADDRESS).map(<[u8]>::to_vec) else {
                    return out;
                };
                if v.len() >= 4 {
                    v[3] ^= 1;
                }
                if let Some(peer) = parse_address(&v, Some(&m.txid)) {
                    self.permissions.insert(peer.ip());
                }
                ok
            }
            0x0009 => {
                let (Some(ch), Some(peer)) = (
                    m.attr(ATTR_CHANNEL_NUMBER),
                    m.xor_address(ATTR_XOR_PEER_ADDRESS),
                ) else {
                    return out;
                };
                let ch = u16::from_be_bytes([ch[0], ch[1]]);
                self.permissions.insert(peer.ip());
                self.channels.insert(ch, peer);
                ok
            }
            _ => return out,
        };
        out.to_client.push(ok.finish_with_integrity(&self.key));
        out
    }

    /// A datagram from `peer` to the relay address: what goes to the client (ChannelData when
    /// the peer has a channel, else a Data indication), if it has a permission.
    pub fn from_peer(&mut self, peer: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
        self.client?;
        if !self.permissions.contains(&peer.ip()) {
            self.refused += 1;
            return None;
        }
        self.relayed.1 += 1;
        if let Some((ch, _)) = self.channels.iter().find(|(_, p)| **p == peer) {
            return Some(channel_data(*ch, bytes, false));
        }
        let txid = [9u8; 12];
        Some(
            MessageBuilder::new(message_type(0x0007, Class::Indication), &txid)
                .xor_address(ATTR_XOR_PEER_ADDRESS, peer)
                .attr(ATTR_DATA, bytes)
                .finish(),
        )
    }

    /// Where the client is (for datagrams to it).
    pub fn client(&self) -> Option<SocketAddr> {
        self.client
    }
}
