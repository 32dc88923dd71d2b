//! [`ClientsEnd`]: web-app clients ([`RemoteClient`]) on one end of the wire.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use super::{tail, End, Wire};
use crate::machine::{earliest, Machine, Next};
use crate::remote_client::{ClientEvent, ClientOutput, RemoteClient};

/// One client of a [`ClientsEnd`].
pub struct Client {
    pub rc: RemoteClient,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// The session id the signaling server gave it (the pair tags its texts with it).
    pub session: String,
    /// What happened to it, oldest first; the test takes what it looks at.
    pub events: VecDeque<ClientEvent>,
    /// Its deadline, as its last poll said.
    deadline: Option<Instant>,
}

impl Client {
    /// Take the text messages received so far (other events stay).
    pub fn texts(&mut self) -> Vec<String> {
        let mut texts = Vec::new();
        self.events.retain(|e| match e {
            ClientEvent::Text(t) => {
                texts.push(t.clone());
                false
            }
            _ => true,
        });
        texts
    }

    /// Text messages received and not taken yet.
    pub fn text_count(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, ClientEvent::Text(_)))
            .count()
    }

    /// Why the client failed, if it did (the event stays).
    pub fn failure(&self) -> Option<&str> {
        self.events.iter().find_map(|e| match e {
            ClientEvent::Failed(why) => Some(why.as_str()),
            _ => None,
        })
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("session", &self.session)
            .field("open", &self.rc.is_open())
            .field("deadline", &self.deadline)
            .field("events", &self.events.len())
            .field("last_events", &tail(self.events.iter(), 8))
            .finish()
    }
}

/// One or more web-app clients of the same gateway, each with its UDP address and session id.
/// Datagrams are routed to the client whose address they are for, signaling texts by session.
pub struct ClientsEnd {
    remote_id: String,
    pub clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    by_session: HashMap<String, usize>,
    /// Where the last poll found output: the next one starts there.
    cursor: usize,
    /// Datagrams for no client's address and texts for no client's session, dropped.
    pub unrouted: u64,
}

impl ClientsEnd {
    /// Clients of the gateway with this Remote ID (they pin its certificate to it).
    pub fn new(remote_id: &str) -> ClientsEnd {
        ClientsEnd {
            remote_id: remote_id.to_string(),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            by_session: HashMap::new(),
            cursor: 0,
            unrouted: 0,
        }
    }

    /// A new client at `addr` whose session will be `session`; its signaling socket opens at
    /// once, so it asks for a session at the next step. Returns its index in `clients`.
    pub fn add(&mut self, now: Instant, addr: SocketAddr, session: &str) -> usize {
        let mut rc = RemoteClient::new(now, &self.remote_id, addr);
        rc.handle_signaling_open(now);
        let i = self.clients.len();
        assert!(
            self.by_addr.insert(addr, i).is_none(),
            "two clients at {addr}"
        );
        assert!(
            self.by_session.insert(session.to_string(), i).is_none(),
            "two clients with session {session}"
        );
        self.clients.push(Client {
            rc,
            addr,
            session: session.to_string(),
            events: VecDeque::new(),
            deadline: None,
        });
        i
    }
}

impl fmt::Debug for ClientsEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientsEnd")
            .field("unrouted", &self.unrouted)
            .field("clients", &self.clients.len())
            .field(
                "last_clients",
                &self.clients.iter().rev().take(4).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl End for ClientsEnd {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        match self.by_addr.get(&to) {
            Some(&i) => self.clients[i].rc.handle_datagram(now, from, bytes),
            None => self.unrouted += 1,
        }
    }

    fn handle_signal(&mut self, now: Instant, session: &str, text: &str) {
        match self.by_session.get(session) {
            Some(&i) => self.clients[i].rc.handle_signaling_text(now, text),
            None => self.unrouted += 1,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        for c in &mut self.clients {
            if c.deadline.is_some_and(|d| d <= now) {
                c.rc.handle_timeout(now);
            }
        }
    }

    fn poll_output(&mut self, _now: Instant) -> Next<Wire> {
        let n = self.clients.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let c = &mut self.clients[i];
            loop {
                let wire = match c.rc.poll_output() {
                    Next::Output(ClientOutput::Event(e)) => {
                        c.events.push_back(e);
                        continue;
                    }
                    Next::Output(ClientOutput::Signal(text)) => Wire::Signal {
                        session: c.session.clone(),
                        text,
                    },
                    Next::Output(ClientOutput::Transmit {
                        destination,
                        contents,
                    }) => Wire::Datagram {
                        from: c.addr,
                        to: destination,
                        bytes: contents,
                    },
                    Next::Timeout(t) => {
                        c.deadline = t;
                        break;
                    }
                };
                self.cursor = i;
                return Next::Output(wire);
            }
        }
        Next::Timeout(
            self.clients
                .iter()
                .fold(None, |t, c| earliest(t, c.deadline)),
        )
    }
}
