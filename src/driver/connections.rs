//! The outgoing connections of a driver, whatever they carry (docs/design.md#drivers):
//! one table keyed by mio [`Token`], each connection tagged with the owner the driver gives it
//! (which machine it serves). Resolving, connecting, reading until `WouldBlock`, flushing once
//! per turn and dropping are written here once for every kind; the driver only learns, per
//! owner, that a connection opened, what it received and how it ended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mio::{Registry, Token, Waker};
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::Message;

use super::table::Table;
use crate::config::WsUrl;
use crate::net::link::{Incoming, Link};
use crate::net::resolve::{LookupId, Resolver};
use crate::net::{Progress, READ_BUFFER};

/// Messages (or reads of a byte stream) taken from one connection before the others, the UDP
/// socket and the timers get a turn; the rest is read on the next turn.
pub const READS_PER_TURN: usize = 64;

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The peer closed it cleanly (a close frame, or the end of a byte stream).
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// The other end does not read as fast as we write: the bounded write buffer is full.
    Full,
    Failed(String),
}

impl End {
    /// For a log line: how the connection ended; `slow` names who did not keep up.
    pub fn describe(&self, slow: &str) -> String {
        match self {
            End::Closed {
                code: Some(c),
                reason,
            } => format!("closed ({c} {reason})"),
            End::Closed { .. } => "closed".into(),
            End::Full => format!("{slow} (write buffer full)"),
            End::Failed(why) => why.clone(),
        }
    }
}

/// What the driver learns about a connection besides the data it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected (a WebSocket: handshake done); writes queued before now go out.
    Opened,
    /// Gone, and forgotten here.
    Ended(End),
}

/// Data read from a connection: borrowed, so nothing is copied on the way to its machine.
pub enum Data<'a> {
    Message(Message),
    Bytes(&'a [u8]),
}

pub struct Connections<O> {
    registry: Registry,
    resolver: Resolver,
    tls: Option<Arc<rustls::ClientConfig>>,
    table: Table<(O, Link)>,
    by_owner: HashMap<O, Token>,
    /// DNS lookups by id: a connection's, or the driver's own (`None`).
    lookups: HashMap<LookupId, Option<Token>>,
    /// Written to in this turn: flushed once by [`Connections::flush`].
    dirty: HashSet<Token>,
    /// Left with data to read when their turn's budget ran out.
    unfinished: HashSet<Token>,
    events: VecDeque<(O, Event)>,
    buf: Vec<u8>,
}

impl<O: Copy + Eq + Hash> Connections<O> {
    /// Tokens from `first_token` up; DNS answers wake `waker`.
    pub fn new(
        registry: &Registry,
        waker: Arc<Waker>,
        first_token: usize,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> io::Result<Connections<O>> {
        Ok(Connections {
            registry: registry.try_clone()?,
            resolver: Resolver::new(waker),
            tls,
            table: Table::new(first_token),
            by_owner: HashMap::new(),
            lookups: HashMap::new(),
            dirty: HashSet::new(),
            unfinished: HashSet::new(),
            events: VecDeque::new(),
            buf: vec![0; READ_BUFFER],
        })
    }

    /// Open a WebSocket for `owner` (replacing one it may have): TLS for `wss://` only (the
    /// configuration exists as soon as any URL needs it, e.g. a `wss://` signaling server
    /// beside a `ws://` MA).
    pub fn open_websocket(&mut self, owner: O, url: &WsUrl, config: WebSocketConfig) {
        let tls = self.tls.clone().filter(|_| url.tls);
        self.open(owner, |token, resolver| {
            Link::websocket(url, tls, config, token, resolver)
        });
    }

    /// Open a byte stream for `owner` to the host of `url` (TLS for `wss://`).
    pub fn open_stream(&mut self, owner: O, url: &WsUrl) {
        let tls = self.tls.clone().filter(|_| url.tls);
        self.open(owner, |token, resolver| {
            Link::stream(&url.host, url.port, tls, token, resolver)
        });
    }

    /// Open a byte stream for `owner` to `host:port`, TLS (verifying `host`) when `tls`.
    /// `false` when TLS is asked for and no TLS configuration was given.
    pub fn open_tcp(&mut self, owner: O, host: &str, port: u16, tls: bool) -> bool {
        let config = match tls {
            true => match self.tls.clone() {
                Some(c) => Some(c),
                None => return false,
            },
            false => None,
        };
        self.open(owner, |token, resolver| {
            Link::stream(host, port, config, token, resolver)
        });
        true
    }

    /// Queue a datagram-like message on `owner`'s byte stream only if its write buffer takes
    /// it whole and still has `reserve` bytes left for messages that must not be lost: a
    /// stream that does not keep up loses these messages (as UDP would), not the connection.
    /// `false` if it was dropped or there is no connection.
    pub fn write_or_drop(&mut self, owner: O, bytes: &[u8], reserve: usize) -> bool {
        let room = self
            .by_owner
            .get(&owner)
            .and_then(|t| self.table.get(*t))
            .is_some_and(|(_, l)| l.has_room(bytes.len() + reserve));
        room && self.write(owner, bytes)
    }

    /// The peer address of `owner`'s byte stream, once connected.
    pub fn peer_addr(&self, owner: O) -> Option<SocketAddr> {
        let token = self.by_owner.get(&owner)?;
        self.table.get(*token)?.1.peer_addr()
    }

    fn open(&mut self, owner: O, start: impl FnOnce(Token, &mut Resolver) -> Link) {
        self.close(owner, None);
        let resolver = &mut self.resolver;
        let token = self.table.insert(|token| (owner, start(token, resolver)));
        if let Some(id) = self.table.get_mut(token).and_then(|(_, l)| l.lookup()) {
            self.lookups.insert(id, Some(token));
        }
        self.by_owner.insert(owner, token);
    }

    /// Resolve a name for the driver itself; the answer comes from [`Connections::on_dns`].
    pub fn resolve(&mut self, host: &str, port: u16) -> LookupId {
        let id = self.resolver.lookup(host, port);
        self.lookups.insert(id, None);
        id
    }

    /// DNS answers are in: advance the connections waiting for theirs; return the driver's.
    pub fn on_dns(&mut self) -> Vec<(LookupId, io::Result<Vec<SocketAddr>>)> {
        let mut own = Vec::new();
        for (id, answer) in self.resolver.poll() {
            match self.lookups.remove(&id) {
                Some(Some(token)) => {
                    // The token may have been reused since: only its own lookup counts.
                    let mut link = self.table.get_mut(token).map(|(_, l)| l);
                    if let Some(link) = link.take_if(|l| l.lookup() == Some(id)) {
                        let progress = link.on_resolved(&self.registry, answer);
                        self.on_progress(token, progress);
                    }
                }
                Some(None) => own.push((id, answer)),
                None => {}
            }
        }
        own
    }

    /// The owner of a token, if it is one of ours.
    pub fn owner(&self, token: Token) -> Option<O> {
        self.table.get(token).map(|(o, _)| *o)
    }

    /// The token of `owner`'s connection.
    pub fn token_of(&self, owner: O) -> Option<Token> {
        self.by_owner.get(&owner).copied()
    }

    /// A readiness event: advance a connection still connecting. `true`: it is open, read it.
    pub fn on_ready(&mut self, token: Token) -> bool {
        let Some((_, link)) = self.table.get_mut(token) else {
            return false;
        };
        let progress = link.on_ready(&self.registry);
        self.on_progress(token, progress)
    }

    fn on_progress(&mut self, token: Token, progress: Progress) -> bool {
        match progress {
            Progress::Pending => false,
            Progress::Failed(why) => {
                self.end(token, End::Failed(why));
                false
            }
            Progress::Opened => {
                if let Some(owner) = self.owner(token) {
                    self.events.push_back((owner, Event::Opened));
                }
                self.dirty.insert(token);
                true
            }
            Progress::Open => true,
        }
    }

    /// Read once from a connection and hand what came to `deliver`, borrowed. `true`: something
    /// was delivered and more may follow; `false`: nothing more for now (the socket would
    /// block: mio is edge-triggered, so the driver reads until then) or the connection ended
    /// (an `Ended` event follows).
    pub fn read_one(&mut self, token: Token, deliver: impl FnOnce(O, Data<'_>)) -> bool {
        let Some((owner, link)) = self.table.get_mut(token) else {
            return false;
        };
        let owner = *owner;
        // Whatever reading queues (pongs, close replies) goes out with this turn's flush.
        self.dirty.insert(token);
        match link.read(&mut self.buf) {
            Ok(None) => false,
            Ok(Some(Incoming::Message(msg))) => {
                deliver(owner, Data::Message(msg));
                true
            }
            Ok(Some(Incoming::Bytes(n))) => {
                deliver(owner, Data::Bytes(&self.buf[..n]));
                true
            }
            Ok(Some(Incoming::Closed { code, reason })) => {
                self.end(token, End::Closed { code, reason });
                false
            }
            Err(why) => {
                self.end(token, End::Failed(why));
                false
            }
        }
    }

    /// The connection's read budget for this turn ran out with data left: the driver reads
    /// it again after one turn of its loop ([`READS_PER_TURN`]).
    pub fn mark_unfinished(&mut self, token: Token) {
        self.unfinished.insert(token);
    }

    /// Connections whose read budget ran out with data left, now due for another turn.
    pub fn take_unfinished(&mut self) -> Vec<Token> {
        self.unfinished.drain().collect()
    }

    /// Whether some connection still has data to read (the loop must not sleep).
    pub fn has_unfinished(&self) -> bool {
        !self.unfinished.is_empty()
    }

    /// Queue a WebSocket message for `owner`; `false` if it has no connection.
    pub fn send(&mut self, owner: O, msg: Message) -> bool {
        self.queue(owner, |link| match link.send(msg) {
            Ok(()) => Ok(()),
            Err(None) => Err(End::Full),
            Err(Some(why)) => Err(End::Failed(why)),
        })
    }

    /// Queue bytes on `owner`'s byte stream; `false` if it has no connection.
    pub fn write(&mut self, owner: O, bytes: &[u8]) -> bool {
        self.queue(owner, |link| link.write(bytes).map_err(End::Failed))
    }

    /// Queue something on `owner`'s connection for this turn's flush; a failure ends it.
    fn queue(&mut self, owner: O, put: impl FnOnce(&mut Link) -> Result<(), End>) -> bool {
        let Some(token) = self.by_owner.get(&owner).copied() else {
            return false;
        };
        let Some((_, link)) = self.table.get_mut(token) else {
            return false;
        };
        match put(link) {
            Ok(()) => {
                self.dirty.insert(token);
            }
            Err(end) => self.end(token, end),
        }
        true
    }

    /// Push out what this turn queued, once per connection.
    pub fn flush(&mut self) {
        for token in std::mem::take(&mut self.dirty) {
            let flushed = self.table.get_mut(token).map(|(_, l)| l.flush());
            if let Some(Err(why)) = flushed {
                self.end(token, End::Failed(why));
            }
        }
    }

    /// Whether a flush is due.
    pub fn has_writes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<(O, Event)> {
        self.events.pop_front()
    }

    /// Close `owner`'s connection because its machine no longer wants it (no event follows).
    pub fn close(&mut self, owner: O, frame: Option<CloseFrame>) {
        if let Some(token) = self.by_owner.get(&owner).copied() {
            if let Some(mut link) = self.forget(token) {
                link.close(&self.registry, frame);
            }
        }
    }

    /// Close every connection (shutting down).
    pub fn close_all(&mut self, frame: CloseFrame) {
        for token in self.table.tokens() {
            if let Some(mut link) = self.forget(token) {
                link.close(&self.registry, Some(frame.clone()));
            }
        }
    }

    fn forget(&mut self, token: Token) -> Option<Link> {
        let (owner, link) = self.table.remove(token)?;
        if self.by_owner.get(&owner) == Some(&token) {
            self.by_owner.remove(&owner);
        }
        self.dirty.remove(&token);
        self.unfinished.remove(&token);
        Some(link)
    }

    /// The connection ended on its own: drop it and tell the driver.
    fn end(&mut self, token: Token, end: End) {
        let owner = self.owner(token);
        if let (Some(owner), Some(mut link)) = (owner, self.forget(token)) {
            link.close(&self.registry, None);
            self.events.push_back((owner, Event::Ended(end)));
        }
    }
}
