//! One data channel bridged to a local WebSocket: the queues in both directions and the rules
//! for moving messages through them without loss, reordering or unbounded memory.
//!
//! - client → local: messages that arrive before the local socket is open wait in `to_local`
//!   (bounded); once open they go straight to the driver.
//! - local → client: messages go to the data channel at once if the peer's send budget takes
//!   them; otherwise they wait in `to_peer` (bounded). While `to_peer` is high the driver stops
//!   reading the local socket; it resumes when the queue drains.

use std::time::Instant;

use str0m::channel::ChannelId;
use tungstenite::{Message, Utf8Bytes};

use super::channels::ChannelKind;
use super::observe::Traffic;
use super::queue::{ByteQueue, ByteSize, Frame, Full};
use crate::chunk::{ChunkFrames, Chunker, Frames};
use crate::http_proxy::response::BodyFrames;
use crate::webrtc::session::{PeerSession, SessionError};

/// Identifies a bridge's local socket to the driver.
pub type BridgeId = u64;

/// A message waiting for the peer's send budget.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Frame),
    /// A large text cut into `__chunk__` frames, produced one at a time.
    Chunks(ChunkFrames<Utf8Bytes>),
    /// An HTTP proxy response body as binary frames (slices of one buffer, no copy).
    Body(BodyFrames),
}

impl ByteSize for Outgoing {
    fn size(&self) -> usize {
        match self {
            Outgoing::Frame(f) => f.size(),
            Outgoing::Chunks(c) => c.message().len(),
            Outgoing::Body(b) => b.size(),
        }
    }
}

/// Result of trying to move queued messages to the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything went out.
    Done,
    /// The send budget is full: retry on the session's `Writable` event.
    Blocked,
    /// The channel or session is gone.
    Closed(String),
}

#[derive(Debug)]
pub struct Bridge {
    pub kind: ChannelKind,
    pub channel: ChannelId,
    /// The local WebSocket's id (none for channels the gateway serves itself).
    pub local: Option<BridgeId>,
    pub local_open: bool,
    /// The local socket must be open by then (connect and handshake), or the bridge fails.
    pub connect_deadline: Option<Instant>,
    /// Held, not connected (`sendspin` before the session's login): the client's messages
    /// wait in `to_local`, and the channel is closed at this time unless MA confirms a login
    /// first (docs/protocol.md#channels-and-labels).
    pub hold_until: Option<Instant>,
    to_local: ByteQueue<Message>,
    to_peer: ByteQueue<Outgoing>,
    /// A frame taken from `Outgoing::Chunks` that did not fit yet.
    stalled_chunk: Option<String>,
    /// The driver was told to stop reading the local socket.
    pub read_paused: bool,
    /// First text message seen on this bridge (for Sendspin's auth `client_id`).
    pub saw_text: bool,
    /// An HTTP proxy response is being delivered on this `http_proxy` channel.
    pub proxy_busy: bool,
    /// Written to the data channel so far (for the status page).
    pub sent: Traffic,
}

impl Bridge {
    pub fn new(
        kind: ChannelKind,
        channel: ChannelId,
        local: Option<BridgeId>,
        limits: &Limits,
    ) -> Bridge {
        Bridge {
            kind,
            channel,
            local,
            local_open: false,
            connect_deadline: None,
            hold_until: None,
            to_local: ByteQueue::new(limits.to_local),
            to_peer: ByteQueue::new(limits.to_peer),
            stalled_chunk: None,
            read_paused: false,
            saw_text: false,
            proxy_busy: false,
            sent: Traffic::default(),
        }
    }

    /// A message from the client for the local socket: `Some` to send now, `None` if it was
    /// queued until the socket opens. `Err` when the queue is full (the client floods).
    pub fn from_peer(&mut self, msg: Message) -> Result<Option<Message>, Full> {
        if self.local_open {
            Ok(Some(msg))
        } else {
            self.to_local.push(msg).map(|()| None)
        }
    }

    /// The local socket opened: everything queued for it, in order.
    pub fn local_opened(&mut self) -> Vec<Message> {
        self.local_open = true;
        self.connect_deadline = None;
        std::iter::from_fn(|| self.to_local.pop()).collect()
    }

    /// A message from the local socket for the client. Text on the API channel is chunked when
    /// it exceeds `limit`. Returns `Err(Full)` if the queue overflows (the driver should have
    /// paused reading before that).
    /// `session` names the session in the log line of a message that cannot be sent.
    pub fn from_local(
        &mut self,
        msg: Message,
        chunker: &mut Chunker,
        limit: usize,
        session: &str,
    ) -> Result<(), Full> {
        let out = match msg {
            Message::Text(text) if self.kind == ChannelKind::Api => {
                match chunked_text(text, chunker, limit) {
                    Some(out) => out,
                    None => {
                        log::warn!(
                            "[{session}] a message for the client cannot be chunked to {limit} \
                             bytes; dropped"
                        );
                        return Ok(());
                    }
                }
            }
            Message::Text(text) => Outgoing::Frame(Frame {
                binary: false,
                data: text.into(),
            }),
            Message::Binary(data) => Outgoing::Frame(Frame { binary: true, data }),
            _ => return Ok(()),
        };
        self.enqueue(out)
    }

    /// The newest message waits for the client: if it is small, give it an allocation of its
    /// own. A message read from a local WebSocket is a slice of the read buffer it arrived in
    /// (a buffer of at least `net::link::WS_READ_BUFFER`), and while it waits it keeps that
    /// whole buffer alive, which the memory budget (counting message bytes) does not see. A
    /// large message was read into a buffer of its own size and stays as it is; messages that
    /// go straight through are never copied. docs/design.md#backpressure
    pub fn compact_newest(&mut self) {
        if let Some(Outgoing::Frame(f)) = self.to_peer.back_mut() {
            if f.data.len() < COMPACT_BELOW {
                f.data = tungstenite::Bytes::copy_from_slice(&f.data);
            }
        }
    }

    /// The newest message waiting for the client, if it is a single frame.
    #[cfg(test)]
    pub fn newest_waiting(&mut self) -> Option<&Frame> {
        match self.to_peer.back_mut() {
            Some(Outgoing::Frame(f)) => Some(f),
            _ => None,
        }
    }

    /// Queue a message the gateway itself produced (an HTTP proxy response on `ma-api`): text,
    /// chunked like MA's own messages when large, under the same rule as MA's messages.
    pub fn push_text(
        &mut self,
        text: String,
        chunker: &mut Chunker,
        limit: usize,
    ) -> Result<(), Full> {
        let out = chunked_text(Utf8Bytes::from(text), chunker, limit).ok_or(Full)?;
        self.enqueue(out)
    }

    /// Below the high-water mark any message is taken, whatever its size: the driver stops
    /// reading the local socket at that mark, so the queue passes it by one message at most
    /// (itself capped by the WebSocket's max message size, or the proxy's body limit). MA's
    /// messages are never dropped; above the mark the queue's own limit applies.
    fn enqueue(&mut self, out: Outgoing) -> Result<(), Full> {
        if self.to_peer.is_high() {
            self.to_peer.push(out)
        } else {
            self.to_peer.push_bounded_elsewhere(out);
            Ok(())
        }
    }

    /// Queue an `http_proxy` response: its text header, then its body frames.
    pub fn push_binary_response(&mut self, header: String, body: BodyFrames) {
        let header = Outgoing::Frame(Frame {
            binary: false,
            data: header.into(),
        });
        // One response at a time per channel (the pool holds the next one back), and its
        // size is capped by the pool: it goes in whatever the queue's own limit.
        self.to_peer.push_bounded_elsewhere(header);
        if body.size() > 0 {
            self.to_peer.push_bounded_elsewhere(Outgoing::Body(body));
        }
        self.proxy_busy = true;
    }

    /// Whether the driver should stop reading the local socket.
    pub fn peer_queue_high(&self) -> bool {
        self.to_peer.is_high()
    }

    /// Bytes this bridge holds in its queues (both directions).
    pub fn queued_bytes(&self) -> usize {
        let stalled = self.stalled_chunk.as_ref().map_or(0, String::len);
        self.to_local.bytes() + self.to_peer.bytes() + stalled
    }

    pub fn has_queued_for_peer(&self) -> bool {
        !self.to_peer.is_empty() || self.stalled_chunk.is_some()
    }

    /// Move queued messages into the data channel while the send budget takes them.
    pub fn flush_to_peer(&mut self, now: Instant, peer: &mut PeerSession) -> Flush {
        loop {
            if let Some(frame) = self.stalled_chunk.take() {
                match write(
                    peer,
                    now,
                    self.channel,
                    false,
                    frame.as_bytes(),
                    &mut self.sent,
                ) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.stalled_chunk = Some(frame);
                        return Flush::Blocked;
                    }
                    Err(e) => return Flush::Closed(e),
                }
            }
            let Some(item) = self.to_peer.pop() else {
                return Flush::Done;
            };
            match item {
                Outgoing::Frame(frame) => {
                    match write(
                        peer,
                        now,
                        self.channel,
                        frame.binary,
                        &frame.data,
                        &mut self.sent,
                    ) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.to_peer.push_front(Outgoing::Frame(frame));
                            return Flush::Blocked;
                        }
                        Err(e) => return Flush::Closed(e),
                    }
                }
                Outgoing::Body(mut frames) => {
                    let Some(frame) = frames.peek() else { continue };
                    match write(peer, now, self.channel, true, &frame, &mut self.sent) {
                        Ok(true) => {
                            frames.advance();
                            if frames.remaining_bytes() > 0 {
                                self.to_peer.push_front(Outgoing::Body(frames));
                            }
                        }
                        Ok(false) => {
                            self.to_peer.push_front(Outgoing::Body(frames));
                            return Flush::Blocked;
                        }
                        Err(e) => return Flush::Closed(e),
                    }
                }
                Outgoing::Chunks(mut frames) => {
                    // Take one frame; the rest of the message stays at the front of the queue.
                    if let Some(next) = frames.next() {
                        self.stalled_chunk = Some(next);
                        if frames.len() > 0 {
                            self.to_peer.push_front(Outgoing::Chunks(frames));
                        }
                    }
                }
            }
        }
    }
}

/// A text for the API channel: whole if it fits `limit`, else `__chunk__` frames (`None` if
/// even a frame cannot fit).
fn chunked_text(text: Utf8Bytes, chunker: &mut Chunker, limit: usize) -> Option<Outgoing> {
    match chunker.frame(text, limit).ok()? {
        Frames::Whole(text) => Some(Outgoing::Frame(Frame {
            binary: false,
            data: text.into(),
        })),
        Frames::Chunked(frames) => Some(Outgoing::Chunks(frames)),
    }
}

/// Write one message; `Ok(false)` when the budget is full. A message that can never be sent
/// (over the peer's limit) is dropped with a warning rather than wedging the channel.
fn write(
    peer: &mut PeerSession,
    now: Instant,
    channel: ChannelId,
    binary: bool,
    data: &[u8],
    sent: &mut Traffic,
) -> Result<bool, String> {
    if data.is_empty() {
        // str0m cannot send an empty message (it would stall the ordered stream).
        log::debug!(
            "[{}] dropping an empty message for the client",
            peer.log_id()
        );
        return Ok(true);
    }
    match peer.write(now, channel, binary, data) {
        Ok(accepted) => {
            if accepted {
                sent.add(data.len());
            }
            Ok(accepted)
        }
        Err(SessionError::MessageTooLarge { len, max }) => {
            log::warn!(
                "[{}] dropping a {len}-byte message: the client accepts at most {max} bytes",
                peer.log_id()
            );
            Ok(true)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Waiting messages smaller than this get their own allocation ([`Bridge::compact_newest`]):
/// twice the local WebSockets' read buffer.
pub const COMPACT_BELOW: usize = 32 * 1024;

/// Largest message accepted from a local service (MA's player and library lists can be large;
/// they are chunked towards the client).
pub const LOCAL_MAX_MESSAGE: usize = 32 * 1024 * 1024;
/// Bytes queued towards a local service before the client counts as flooding it.
pub const LOCAL_MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// Queue bounds of a bridge.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes from the client held until the local socket opens.
    pub to_local: usize,
    /// Bytes from the local socket held while the data channel is backed up.
    pub to_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            to_local: 4 * 1024 * 1024,
            to_peer: 1024 * 1024,
        }
    }
}
