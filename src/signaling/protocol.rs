//! The signaling protocol's messages, spelled once (docs/protocol.md#signaling).
//!
//! The three sides share these types: the gateway ([`super::client`]) and the web app's side
//! ([`crate::remote_client`]) send [`ToServer`] and read [`FromServer`]; our server
//! ([`super::server`]) does the opposite. Besides the messages this module holds the close codes
//! (docs/protocol.md#close-codes), the error texts (docs/protocol.md#error-replies) and
//! [`SessionId`], the only form in which a session id gets past parsing.
//!
//! Received fields are lenient the way every side has always read them: a field that is missing
//! and one of the wrong type both read as `None`, and each side answers that as
//! docs/protocol.md says. The exception is `sessionId`: a string there must be a valid
//! [`SessionId`], or the whole message is refused ([`ParseError::InvalidSessionId`]).
//!
//! What the protocol treats as opaque stays [`Value`]: ICE server lists, candidate objects, the
//! `data` of relayed messages and any field the server relays without knowing it
//! ([`Relay::extra`]). On the wire `type` comes first, then the fields in the order declared
//! here; object keys carry no meaning in this protocol.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// Close code: the same Remote ID registered again from another socket.
pub const CLOSE_REPLACED: u16 = 4000;
/// The reason text sent with [`CLOSE_REPLACED`].
pub const CLOSE_REPLACED_REASON: &str = "Replaced by new connection";
/// Close code: too many failed Remote ID lookups from this IP.
pub const CLOSE_BLOCKED: u16 = 4008;
/// The reason text sent with [`CLOSE_BLOCKED`].
pub const CLOSE_BLOCKED_REASON: &str = "Too many failed lookups";
/// Close code (our extension, docs/protocol.md#ownership-proof): a Remote ID held by a proven
/// registration was registered again without a valid proof.
pub const CLOSE_OWNED: u16 = 4003;
/// The reason text sent with [`CLOSE_OWNED`].
pub const CLOSE_OWNED_REASON: &str = "Remote ID is owned by another server";
/// Close code (ours): too many open sockets from this IP, or a socket that took no role in
/// time (docs/protocol.md#server-limits).
pub const CLOSE_POLICY: u16 = 1008;
/// The reason text when an IP has too many sockets open.
pub const CLOSE_TOO_MANY_SOCKETS_REASON: &str = "Too many connections from this address";
/// The reason text for a socket that neither registered nor asked for a session in time.
pub const CLOSE_IDLE_REASON: &str = "No registration or session request";
/// The reason text for a client whose relayed messages its gateway cannot take in.
pub const CLOSE_FLOODING_REASON: &str = "Too many messages for the gateway";
/// Close code: too many messages from this IP.
pub const CLOSE_RATE_LIMITED: u16 = 4029;
/// The reason text sent with [`CLOSE_RATE_LIMITED`].
pub const CLOSE_RATE_LIMITED_REASON: &str = "Rate limited";

// The `error` texts our server sends (docs/protocol.md#error-replies); those the public server
// also sends are spelled exactly as it does.
pub const ERR_REMOTE_ID_REQUIRED: &str = "Remote ID required";
pub const ERR_SESSION_ID_REQUIRED: &str = "Session ID required";
pub const ERR_SERVER_NOT_FOUND: &str =
    "Server not found. Make sure your Music Assistant server is running and has Remote Access enabled.";
pub const ERR_SESSION_NOT_FOUND: &str = "Session not found";
pub const ERR_SERVER_DISCONNECTED: &str = "Server disconnected";
pub const ERR_NOT_REGISTERED: &str = "Not registered";
pub const ERR_NOT_A_REGISTERED_SERVER: &str = "Not a registered server";
pub const ERR_CLIENT_NOT_FOUND: &str = "Client not found";
pub const ERR_INVALID_FORMAT: &str = "Invalid message format";
pub const ERR_BLOCKED: &str = "Too many failed attempts. You have been temporarily blocked.";
pub const ERR_REMOTE_ID_OWNED: &str = "Remote ID is owned by another server";
pub const ERR_INVALID_REMOTE_ID: &str = "Invalid Remote ID";
pub const ERR_SERVER_BUSY: &str = "Server busy. Try again later.";
pub const ERR_BINARY: &str = "Binary messages are not supported";

/// The error text for a peer over the message rate limit (and the `/api/check` body).
pub fn err_rate_limited(retry_after_secs: u64) -> String {
    format!("Rate limited. Try again in {retry_after_secs} seconds.")
}

/// Longest session id accepted.
pub const MAX_SESSION_ID_LEN: usize = 64;
/// How much of a refused session id a log line shows.
const SHOWN_SESSION_ID_LEN: usize = 32;

/// `s` for a log line: at most `max` bytes of it (cut at a character boundary, `…` added), in
/// quotes with control and other unprintable characters escaped, so a peer's text can neither
/// forge log lines nor flood them.
pub fn escaped(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut shown = format!("{:?}", &s[..end]);
    if end < s.len() {
        shown.push('…');
    }
    shown
}

/// A session id that passed validation: 1 to [`MAX_SESSION_ID_LEN`] characters from
/// `[A-Za-z0-9_-]` (docs/protocol.md#relay-rules). Safe in a URL, a query string or a log line
/// as it is.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct SessionId(String);

/// Why a session id was refused; its `Display` shows the id escaped and cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSessionId {
    reason: &'static str,
    shown: String,
    len: usize,
}

impl fmt::Display for InvalidSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid session id {} ({} bytes: {})",
            self.shown, self.len, self.reason
        )
    }
}

impl std::error::Error for InvalidSessionId {}

fn check_session_id(id: &str) -> Result<(), InvalidSessionId> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > MAX_SESSION_ID_LEN {
        "too long"
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        "only A-Z, a-z, 0-9, _ and - are allowed"
    } else {
        return Ok(());
    };
    Err(InvalidSessionId {
        reason,
        shown: escaped(id, SHOWN_SESSION_ID_LEN),
        len: id.len(),
    })
}

impl SessionId {
    pub fn parse(id: &str) -> Result<SessionId, InvalidSessionId> {
        check_session_id(id)?;
        Ok(SessionId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SessionId {
    type Error = InvalidSessionId;

    fn try_from(id: String) -> Result<SessionId, InvalidSessionId> {
        check_session_id(&id)?;
        Ok(SessionId(id))
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Deref for SessionId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by [`SessionId`] can be searched with a `&str`.
impl Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for SessionId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SessionId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A string field; any other type reads as missing.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(Some(s)),
        _ => Ok(None),
    }
}

/// `sessionId`: a string must be a valid session id; any other type reads as missing.
fn session_id_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SessionId>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => SessionId::try_from(s).map(Some).map_err(D::Error::custom),
        _ => Ok(None),
    }
}

/// A field kept exactly as received, `null` included (only a missing one is `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `offer`, `answer` and `ice-candidate`: what the server passes between a client and its
/// gateway (docs/protocol.md#relay-rules). It reads and sets only `sessionId` (and stamps
/// `remoteId` on offers to the gateway); `data` and every other field go through untouched.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Relay {
    #[serde(
        rename = "sessionId",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "session_id_field"
    )]
    pub session_id: Option<SessionId>,
    /// `{"type":"offer"|"answer","sdp":…}`, or the candidate object of `ice-candidate`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub data: Option<Value>,
    /// Fields this side does not know, relayed as they came (e.g. `remoteId` on an offer).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `data` of an offer or an answer.
fn description(kind: &str, sdp: &str) -> Value {
    let mut data = Map::new();
    data.insert("type".into(), Value::from(kind));
    data.insert("sdp".into(), Value::from(sdp));
    Value::Object(data)
}

impl Relay {
    fn with_data(session_id: SessionId, data: Value) -> Relay {
        Relay {
            session_id: Some(session_id),
            data: Some(data),
            extra: Map::new(),
        }
    }

    /// An SDP offer for `offer`.
    pub fn offer(session_id: SessionId, sdp: &str) -> Relay {
        Relay::with_data(session_id, description("offer", sdp))
    }

    /// An SDP answer for `answer`.
    pub fn answer(session_id: SessionId, sdp: &str) -> Relay {
        Relay::with_data(session_id, description("answer", sdp))
    }

    /// A candidate object (`candidate`, `sdpMid`, `sdpMLineIndex`, …) for `ice-candidate`.
    pub fn candidate(session_id: SessionId, candidate: Value) -> Relay {
        Relay::with_data(session_id, candidate)
    }

    /// `data.sdp` of an offer or an answer.
    pub fn sdp(&self) -> Option<&str> {
        self.data.as_ref()?.get("sdp")?.as_str()
    }

    /// `data.candidate` of an `ice-candidate`: the `candidate:…` line.
    pub fn candidate_line(&self) -> Option<&str> {
        self.data.as_ref()?.get("candidate")?.as_str()
    }

    /// The server's stamp on an offer it passes to the gateway: the gateway's Remote ID.
    pub fn set_remote_id(&mut self, remote_id: &str) {
        self.extra
            .insert("remoteId".into(), Value::from(remote_id.to_string()));
    }
}

/// A candidate object as `RTCIceCandidate.toJSON()` gives it, for [`Relay::candidate`].
pub fn candidate_init(candidate: &str, sdp_mid: &str, sdp_m_line_index: u32) -> Value {
    let mut data = Map::new();
    data.insert("candidate".into(), Value::from(candidate));
    data.insert("sdpMid".into(), Value::from(sdp_mid));
    data.insert("sdpMLineIndex".into(), Value::from(sdp_m_line_index));
    Value::Object(data)
}

/// What a gateway or a client sends to the signaling server (docs/protocol.md#gateway-messages,
/// #client-messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ToServer {
    /// Gateway: register `remoteId`; on the same socket again, only replace `iceServers`.
    #[serde(rename_all = "camelCase")]
    RegisterServer {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_string"
        )]
        remote_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_servers: Option<Value>,
        /// Our extension: proof that this gateway holds the certificate of `remoteId`
        /// (docs/protocol.md#ownership-proof). Anything but an object reads as missing.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_proof"
        )]
        proof: Option<Proof>,
    },
    /// Client: ask for a session with the gateway `remoteId`.
    #[serde(rename_all = "camelCase")]
    ConnectRequest {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_string"
        )]
        remote_id: Option<String>,
    },
    /// Gateway: the reply to `client-connected`, with the ICE servers for this session.
    #[serde(rename_all = "camelCase")]
    SessionReady {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "session_id_field"
        )]
        session_id: Option<SessionId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_servers: Option<Value>,
    },
    /// Client (`sessionId` optional: the server sets it).
    Offer(Relay),
    /// Gateway.
    Answer(Relay),
    /// Both.
    IceCandidate(Relay),
    Ping,
    Pong,
}

/// `proof` of `register-server` (docs/protocol.md#ownership-proof): the gateway's DTLS
/// certificate (DER, base64) and its key's ECDSA P-256 / SHA-256 signature (DER, base64) over
/// [`proof_message`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub certificate: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub signature: Option<String>,
}

/// `proof` read leniently: anything that is not an object reads as missing.
fn lenient_proof<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Proof>, D::Error> {
    match Value::deserialize(d)? {
        v @ Value::Object(_) => Ok(serde_json::from_value(v).ok()),
        _ => Ok(None),
    }
}

/// The bytes a [`Proof`] signs: `ma-signaling-proof:` + nonce + `:` + Remote ID.
pub fn proof_message(nonce: &str, remote_id: &str) -> Vec<u8> {
    format!("ma-signaling-proof:{nonce}:{remote_id}").into_bytes()
}

/// What the signaling server sends to a gateway or a client (docs/protocol.md#gateway-messages,
/// #client-messages, #relay-rules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum FromServer {
    /// To a gateway: registration confirmed (`remoteId` as the server keeps it).
    #[serde(rename_all = "camelCase")]
    Registered {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_string"
        )]
        remote_id: Option<String>,
    },
    /// To a gateway: a client asks for a session.
    #[serde(rename_all = "camelCase")]
    ClientConnected {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "session_id_field"
        )]
        session_id: Option<SessionId>,
    },
    /// To a gateway: the client of a session left (pending or connected).
    #[serde(rename_all = "camelCase")]
    ClientDisconnected {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "session_id_field"
        )]
        session_id: Option<SessionId>,
    },
    /// To a client: the session exists; offer now.
    #[serde(rename_all = "camelCase")]
    Connected {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_string"
        )]
        remote_id: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "session_id_field"
        )]
        session_id: Option<SessionId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_servers: Option<Value>,
    },
    /// To a client: the gateway of its connected session left.
    #[serde(rename_all = "camelCase")]
    PeerDisconnected {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "session_id_field"
        )]
        session_id: Option<SessionId>,
    },
    /// To a gateway, with `sessionId` and `remoteId` set by the server.
    Offer(Relay),
    /// To a client.
    Answer(Relay),
    /// To either.
    IceCandidate(Relay),
    /// Our extension, to every new socket: the nonce a gateway signs to prove its Remote ID
    /// (docs/protocol.md#ownership-proof). Clients and MA's gateway ignore it.
    Challenge {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_string"
        )]
        nonce: Option<String>,
    },
    /// `error`; other servers may use `message` instead (docs/protocol.md#error-replies).
    Error {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_string"
        )]
        error: Option<String>,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "lenient_string"
        )]
        message: Option<String>,
    },
    Ping,
    Pong,
}

impl FromServer {
    /// `{"type":"error","error":text}`.
    pub fn error(text: &str) -> FromServer {
        FromServer::Error {
            error: Some(text.to_string()),
            message: None,
        }
    }
}

/// Why a frame was not a message this side understands.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    /// Not JSON (serde's description of the problem).
    NotJson(String),
    /// JSON, but not an object.
    NotAnObject,
    /// `type` is missing (`None`), not a string, or not a type of this direction: the value
    /// as received, unbounded (show it escaped and cut short).
    UnknownType(Option<Value>),
    /// A known `type` whose `sessionId` is a string but not a valid session id.
    InvalidSessionId {
        kind: &'static str,
        error: InvalidSessionId,
    },
    /// A known `type` whose fields do not fit (not expected: fields are lenient).
    Invalid { kind: &'static str, error: String },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotJson(e) => write!(f, "not JSON ({e})"),
            ParseError::NotAnObject => f.write_str("not a JSON object"),
            ParseError::UnknownType(None) => f.write_str("no \"type\""),
            ParseError::UnknownType(Some(Value::String(t))) => {
                write!(f, "unknown type {}", escaped(t, 64))
            }
            ParseError::UnknownType(Some(t)) => {
                write!(
                    f,
                    "\"type\" is not a string: {}",
                    escaped(&t.to_string(), 64)
                )
            }
            ParseError::InvalidSessionId { kind, error } => write!(f, "{kind} with an {error}"),
            ParseError::Invalid { kind, error } => write!(f, "malformed {kind} ({error})"),
        }
    }
}

/// One direction of the protocol.
trait Direction: Serialize + DeserializeOwned {
    /// Every `type` of this direction, as spelled on the wire.
    const TYPES: &'static [&'static str];
}

impl Direction for ToServer {
    const TYPES: &'static [&'static str] = &[
        "register-server",
        "connect-request",
        "session-ready",
        "offer",
        "answer",
        "ice-candidate",
        "ping",
        "pong",
    ];
}

impl Direction for FromServer {
    const TYPES: &'static [&'static str] = &[
        "registered",
        "client-connected",
        "client-disconnected",
        "connected",
        "peer-disconnected",
        "offer",
        "answer",
        "ice-candidate",
        "challenge",
        "error",
        "ping",
        "pong",
    ];
}

fn parse<M: Direction>(text: &str) -> Result<M, ParseError> {
    // The common case in one pass. serde refuses all that the slower path below would refuse
    // or read otherwise (a `type` that is not a string, an invalid session id, duplicate keys:
    // serde_json's `Value` keeps the last one, as every side always has).
    if let Ok(msg) = serde_json::from_str::<M>(text) {
        return Ok(msg);
    }
    // Through a `Value`, so that a refusal can say exactly why.
    let mut msg = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(ParseError::NotAnObject),
        Err(e) => return Err(ParseError::NotJson(e.to_string())),
    };
    let known = match msg.get("type") {
        Some(Value::String(t)) => M::TYPES.iter().copied().find(|k| k == t),
        _ => None,
    };
    let Some(kind) = known else {
        return Err(ParseError::UnknownType(msg.remove("type")));
    };
    if let Some(Value::String(id)) = msg.get("sessionId") {
        if let Err(error) = check_session_id(id) {
            return Err(ParseError::InvalidSessionId { kind, error });
        }
    }
    serde_json::from_value(Value::Object(msg)).map_err(|e| ParseError::Invalid {
        kind,
        error: e.to_string(),
    })
}

fn encode<M: Serialize>(msg: &M) -> String {
    // serde_json fails only on a failing `Serialize` impl or a map with non-string keys;
    // these types have neither.
    serde_json::to_string(msg).unwrap_or_else(|e| {
        log::error!("signaling: cannot encode a message: {e}");
        String::new()
    })
}

impl ToServer {
    /// Parse a text frame a gateway or a client sent.
    pub fn parse(text: &str) -> Result<ToServer, ParseError> {
        parse(text)
    }

    /// The text frame.
    pub fn to_text(&self) -> String {
        encode(self)
    }

    /// `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ToServer::RegisterServer { .. } => "register-server",
            ToServer::ConnectRequest { .. } => "connect-request",
            ToServer::SessionReady { .. } => "session-ready",
            ToServer::Offer(_) => "offer",
            ToServer::Answer(_) => "answer",
            ToServer::IceCandidate(_) => "ice-candidate",
            ToServer::Ping => "ping",
            ToServer::Pong => "pong",
        }
    }
}

impl FromServer {
    /// Parse a text frame the server sent.
    pub fn parse(text: &str) -> Result<FromServer, ParseError> {
        parse(text)
    }

    /// The text frame.
    pub fn to_text(&self) -> String {
        encode(self)
    }

    /// `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            FromServer::Registered { .. } => "registered",
            FromServer::ClientConnected { .. } => "client-connected",
            FromServer::ClientDisconnected { .. } => "client-disconnected",
            FromServer::Connected { .. } => "connected",
            FromServer::PeerDisconnected { .. } => "peer-disconnected",
            FromServer::Offer(_) => "offer",
            FromServer::Answer(_) => "answer",
            FromServer::IceCandidate(_) => "ice-candidate",
            FromServer::Challenge { .. } => "challenge",
            FromServer::Error { .. } => "error",
            FromServer::Ping => "ping",
            FromServer::Pong => "pong",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    fn wire(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn session_ids_valid() {
        for ok in [
            "a",
            "AbCdEfGh12345678",
            "550e8400-e29b-41d4-a716-446655440000",
            "x_y-Z",
            &"z".repeat(MAX_SESSION_ID_LEN),
        ] {
            let id = SessionId::parse(ok).unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
            assert_eq!(SessionId::try_from(ok.to_string()).unwrap(), id);
        }
    }

    #[test]
    fn session_ids_refused() {
        let cases: [(&str, &str); 12] = [
            ("", "empty"),
            (&"z".repeat(MAX_SESSION_ID_LEN + 1), "too long"),
            ("a b", "only"),
            ("a.b", "only"),
            ("../etc", "only"),
            ("a?x=1&y=2", "only"),
            ("a%0d%0a", "only"),
            ("é", "only"),
            ("Ａ", "only"),
            ("١٢٣", "only"),
            ("abc\r\nINFO forged line", "only"),
            ("nul\0", "only"),
        ];
        for (bad, reason) in cases {
            let e = SessionId::parse(bad).unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains(reason), "{shown}");
            assert!(
                !shown.contains('\r') && !shown.contains('\n') && !shown.contains('\0'),
                "escaped: {shown}"
            );
            assert!(SessionId::try_from(bad.to_string()).is_err());
        }
        let e = SessionId::parse("abc\r\nINFO forged line").unwrap_err();
        assert!(
            e.to_string().contains(r#""abc\r\nINFO forged line""#),
            "{e}"
        );
        // A huge id is shown cut short, with its length.
        let huge = "\n".repeat(100_000);
        let shown = SessionId::parse(&huge).unwrap_err().to_string();
        assert!(shown.len() < 200, "{shown}");
        assert!(
            shown.contains("100000 bytes") && shown.contains('…'),
            "{shown}"
        );
        // Cut at a character boundary.
        let shown = SessionId::parse(&"é".repeat(40)).unwrap_err().to_string();
        assert!(
            shown.contains(&format!("\"{}\"…", "é".repeat(16))),
            "{shown}"
        );
    }

    #[test]
    fn session_id_is_a_str_and_a_map_key() {
        let id = sid("abc");
        assert_eq!(&*id, "abc");
        assert_eq!(id, "abc");
        assert_eq!(format!("{id:?}"), r#""abc""#);
        let mut map = std::collections::HashMap::new();
        map.insert(id.clone(), 1);
        assert_eq!(map.get("abc"), Some(&1));
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""abc""#);
        assert_eq!(serde_json::from_str::<SessionId>(r#""abc""#).unwrap(), id);
        assert!(serde_json::from_str::<SessionId>(r#""a b""#).is_err());
    }

    /// One message of every type, each direction, against its wire form.
    #[test]
    fn every_type_has_its_wire_form() {
        let ice = json!([{"urls": "stun:stun.l.google.com:19302"}]);
        let to_server = [
            (
                ToServer::RegisterServer {
                    remote_id: Some("QCPJ".into()),
                    ice_servers: Some(ice.clone()),
                    proof: Some(Proof {
                        certificate: Some("Y2VydA==".into()),
                        signature: Some("c2ln".into()),
                    }),
                },
                json!({"type": "register-server", "remoteId": "QCPJ", "iceServers": ice,
                       "proof": {"certificate": "Y2VydA==", "signature": "c2ln"}}),
            ),
            (
                ToServer::ConnectRequest {
                    remote_id: Some("QCPJ".into()),
                },
                json!({"type": "connect-request", "remoteId": "QCPJ"}),
            ),
            (
                ToServer::SessionReady {
                    session_id: Some(sid("s1")),
                    ice_servers: Some(ice.clone()),
                },
                json!({"type": "session-ready", "sessionId": "s1", "iceServers": ice}),
            ),
            (
                ToServer::Offer(Relay::offer(sid("s1"), "v=0")),
                json!({"type": "offer", "sessionId": "s1", "data": {"type": "offer", "sdp": "v=0"}}),
            ),
            (
                ToServer::Answer(Relay::answer(sid("s1"), "v=0")),
                json!({"type": "answer", "sessionId": "s1", "data": {"type": "answer", "sdp": "v=0"}}),
            ),
            (
                ToServer::IceCandidate(Relay::candidate(
                    sid("s1"),
                    candidate_init("candidate:1 1 udp 1 1.2.3.4 5 typ host", "0", 0),
                )),
                json!({"type": "ice-candidate", "sessionId": "s1",
                       "data": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}}),
            ),
            (ToServer::Ping, json!({"type": "ping"})),
            (ToServer::Pong, json!({"type": "pong"})),
        ];
        assert_eq!(to_server.len(), ToServer::TYPES.len());
        for (msg, expected) in to_server {
            let text = msg.to_text();
            assert_eq!(wire(&text), expected);
            assert!(text.starts_with(&format!(r#"{{"type":"{}""#, msg.kind())));
            assert!(ToServer::TYPES.contains(&msg.kind()));
            assert_eq!(ToServer::parse(&text).unwrap(), msg);
        }

        let mut offer = Relay::offer(sid("s1"), "v=0");
        offer.set_remote_id("QCPJ");
        let from_server = [
            (
                FromServer::Registered {
                    remote_id: Some("QCPJ".into()),
                },
                json!({"type": "registered", "remoteId": "QCPJ"}),
            ),
            (
                FromServer::ClientConnected {
                    session_id: Some(sid("s1")),
                },
                json!({"type": "client-connected", "sessionId": "s1"}),
            ),
            (
                FromServer::ClientDisconnected {
                    session_id: Some(sid("s1")),
                },
                json!({"type": "client-disconnected", "sessionId": "s1"}),
            ),
            (
                FromServer::Connected {
                    remote_id: Some("QCPJ".into()),
                    session_id: Some(sid("s1")),
                    ice_servers: Some(ice.clone()),
                },
                json!({"type": "connected", "remoteId": "QCPJ", "sessionId": "s1", "iceServers": ice}),
            ),
            (
                FromServer::PeerDisconnected {
                    session_id: Some(sid("s1")),
                },
                json!({"type": "peer-disconnected", "sessionId": "s1"}),
            ),
            (
                FromServer::Challenge {
                    nonce: Some("bm9uY2U=".into()),
                },
                json!({"type": "challenge", "nonce": "bm9uY2U="}),
            ),
            (
                FromServer::Offer(offer),
                json!({"type": "offer", "sessionId": "s1", "remoteId": "QCPJ",
                       "data": {"type": "offer", "sdp": "v=0"}}),
            ),
            (
                FromServer::Answer(Relay::answer(sid("s1"), "v=0")),
                json!({"type": "answer", "sessionId": "s1", "data": {"type": "answer", "sdp": "v=0"}}),
            ),
            (
                FromServer::IceCandidate(Relay::candidate(sid("s1"), json!({"candidate": "c"}))),
                json!({"type": "ice-candidate", "sessionId": "s1", "data": {"candidate": "c"}}),
            ),
            (
                FromServer::error(ERR_SESSION_NOT_FOUND),
                json!({"type": "error", "error": "Session not found"}),
            ),
            (FromServer::Ping, json!({"type": "ping"})),
            (FromServer::Pong, json!({"type": "pong"})),
        ];
        assert_eq!(from_server.len(), FromServer::TYPES.len());
        for (msg, expected) in from_server {
            let text = msg.to_text();
            assert_eq!(wire(&text), expected);
            assert!(text.starts_with(&format!(r#"{{"type":"{}""#, msg.kind())));
            assert!(FromServer::TYPES.contains(&msg.kind()));
            assert_eq!(FromServer::parse(&text).unwrap(), msg);
        }
    }

    #[test]
    fn relay_keeps_every_field() {
        let text = r#"{"type":"ice-candidate","sessionId":"forged","remoteId":7,"data":null,"x":{"y":[1,2.5,"z"]},"big":18446744073709551615}"#;
        let ToServer::IceCandidate(mut relay) = ToServer::parse(text).unwrap() else {
            panic!("an ice-candidate");
        };
        assert_eq!(relay.session_id, Some(sid("forged")));
        assert_eq!(relay.data, Some(Value::Null));
        relay.session_id = Some(sid("mine"));
        let out = FromServer::IceCandidate(relay).to_text();
        assert_eq!(
            wire(&out),
            json!({"type": "ice-candidate", "sessionId": "mine", "remoteId": 7, "data": null,
                   "x": {"y": [1, 2.5, "z"]}, "big": 18446744073709551615u64})
        );
        // Without data and sessionId, neither appears.
        let ToServer::Offer(relay) = ToServer::parse(r#"{"type":"offer"}"#).unwrap() else {
            panic!("an offer");
        };
        assert_eq!(relay, Relay::default());
        assert_eq!(
            FromServer::Offer(relay).to_text(),
            r#"{"type":"offer"}"#.to_string()
        );
    }

    #[test]
    fn fields_of_the_wrong_type_read_as_missing() {
        assert_eq!(
            ToServer::parse(r#"{"type":"connect-request","remoteId":5}"#),
            Ok(ToServer::ConnectRequest { remote_id: None })
        );
        assert_eq!(
            ToServer::parse(r#"{"type":"session-ready","sessionId":7,"iceServers":null}"#),
            Ok(ToServer::SessionReady {
                session_id: None,
                ice_servers: None
            })
        );
        assert_eq!(
            FromServer::parse(r#"{"type":"client-connected","sessionId":["x"]}"#),
            Ok(FromServer::ClientConnected { session_id: None })
        );
        assert_eq!(
            FromServer::parse(r#"{"type":"error","error":5,"message":"m"}"#),
            Ok(FromServer::Error {
                error: None,
                message: Some("m".into())
            })
        );
        for proof in [r#""nope""#, "[1]", r#"{"certificate":5}"#] {
            let text = format!(r#"{{"type":"register-server","remoteId":"X","proof":{proof}}}"#);
            let Ok(ToServer::RegisterServer { proof, .. }) = ToServer::parse(&text) else {
                panic!("a register-server: {text}");
            };
            assert!(proof.is_none_or(|p| p.certificate.is_none()), "{text}");
        }
        // Unknown fields of the other messages are ignored, even on ping.
        assert_eq!(
            FromServer::parse(r#"{"type":"ping","ts":1}"#),
            Ok(FromServer::Ping)
        );
        assert_eq!(
            FromServer::parse(r#"{"type":"registered","remoteId":"X","extra":true}"#),
            Ok(FromServer::Registered {
                remote_id: Some("X".into())
            })
        );
    }

    #[test]
    fn refusals_say_why() {
        assert!(matches!(
            ToServer::parse("not json"),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(ToServer::parse("[1,2]"), Err(ParseError::NotAnObject));
        assert_eq!(ToServer::parse("{}"), Err(ParseError::UnknownType(None)));
        assert_eq!(
            ToServer::parse(r#"{"type":1}"#),
            Err(ParseError::UnknownType(Some(json!(1))))
        );
        assert_eq!(
            ToServer::parse(r#"{"type":"bogus"}"#),
            Err(ParseError::UnknownType(Some(json!("bogus"))))
        );
        // Known on the other direction only.
        assert_eq!(
            ToServer::parse(r#"{"type":"connected"}"#),
            Err(ParseError::UnknownType(Some(json!("connected"))))
        );
        assert_eq!(
            FromServer::parse(r#"{"type":"register-server"}"#),
            Err(ParseError::UnknownType(Some(json!("register-server"))))
        );
        for (text, kind) in [
            (
                r#"{"type":"client-connected","sessionId":"a b"}"#,
                "client-connected",
            ),
            (r#"{"type":"offer","sessionId":"","data":{}}"#, "offer"),
            (
                r#"{"type":"ice-candidate","sessionId":"x\r\ny"}"#,
                "ice-candidate",
            ),
        ] {
            match FromServer::parse(text) {
                Err(e @ ParseError::InvalidSessionId { kind: k, .. }) => {
                    assert_eq!(k, kind);
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        match ToServer::parse(&format!(
            r#"{{"type":"session-ready","sessionId":"{}"}}"#,
            "a".repeat(65)
        )) {
            Err(ParseError::InvalidSessionId { kind, .. }) => assert_eq!(kind, "session-ready"),
            other => panic!("{other:?}"),
        }
        // The last of duplicate keys counts, as it always has.
        assert_eq!(
            FromServer::parse(r#"{"type":"ping","type":"client-connected","sessionId":"a"}"#),
            Ok(FromServer::ClientConnected {
                session_id: Some(sid("a"))
            })
        );
        let shown = ParseError::UnknownType(Some(json!("x\n".repeat(100)))).to_string();
        assert!(!shown.contains('\n') && shown.len() < 200, "{shown}");
    }

    #[test]
    fn relay_accessors() {
        let r = Relay::offer(sid("s"), "v=0");
        assert_eq!(r.sdp(), Some("v=0"));
        assert_eq!(r.candidate_line(), None);
        let r = Relay::candidate(sid("s"), candidate_init("candidate:x", "0", 0));
        assert_eq!(r.candidate_line(), Some("candidate:x"));
        assert_eq!(r.sdp(), None);
        assert_eq!(Relay::default().sdp(), None);
    }

    #[test]
    fn texts_on_the_wire() {
        assert_eq!(
            err_rate_limited(40),
            "Rate limited. Try again in 40 seconds."
        );
        assert_eq!(CLOSE_REPLACED, 4000);
        assert_eq!(CLOSE_BLOCKED, 4008);
        assert_eq!(CLOSE_RATE_LIMITED, 4029);
    }
}
