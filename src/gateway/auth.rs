//! Who may use Sendspin (sans-IO): a session's login as MA confirmed it, and the rewriting of a
//! guest's Sendspin `client/hello` (docs/protocol.md#channels-and-labels).
//!
//! MA's rule: a client logs in on `ma-api` with `{"command":"auth","args":{"token":..},
//! "message_id":M}` and MA answers with the same `message_id`, either
//! `{"result":{"authenticated":true,"user":{"role":R,..}}}` or an error reply. Only that reply,
//! read from the session's own MA socket and matched to an `auth` command the client sent on
//! the same session, makes the session authenticated. Nothing the client says can: it only
//! announces which `message_id`s to watch for, and any doubt (an `auth` we cannot track, a
//! reused id, an unanswered one, a reply that is not a clear success) logs the session out.
//!
//! [`SessionAuth`] is one session's state; the core feeds it the client's and MA's `ma-api`
//! texts and acts on the [`Change`] it returns. [`guest_hello`] is the rewriter, a pure
//! function. JSON is parsed only when a cheap look at the text says it may matter: MA's API
//! traffic can be large.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `auth` commands awaiting MA's reply, at most; one more logs the session out instead.
pub const MAX_PENDING: usize = 8;
/// An `auth` MA has not answered within this is forgotten, and the session logged out.
pub const PENDING_TTL: Duration = Duration::from_secs(30);
/// MA's reply to `auth` is small; a larger message is never taken for one.
pub const MAX_REPLY_LEN: usize = 64 * 1024;
/// The roles a guest's Sendspin client may ask for.
pub const GUEST_ROLES: &str = "player@v1";

/// A user's role, as MA reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    User,
    Guest,
    Service,
}

impl Role {
    /// A role MA names; a missing or unknown one counts as the least privileged, `guest`.
    pub fn parse(name: Option<&str>) -> Role {
        match name {
            Some("admin") => Role::Admin,
            Some("user") => Role::User,
            Some("service") => Role::Service,
            _ => Role::Guest,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Guest => "guest",
            Role::Service => "service",
        }
    }
}

/// What a text changed about the session's login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// MA confirmed a login: the session is authenticated with this role (it may have been
    /// before, with another).
    LoggedIn(Role),
    /// The session is no longer authenticated (it was, or had a login pending), and why.
    LoggedOut(String),
}

/// A client command on `ma-api` that matters here.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand {
    /// `auth` with its `message_id` (`None`: missing, or neither a string nor a number).
    Auth { message_id: Option<Value> },
    /// `auth/logout`.
    Logout,
    /// Any other command, with its `message_id` if it has one.
    Other { message_id: Option<Value> },
}

/// Parse a client text on `ma-api` (`None`: not a JSON object with a string `command`).
pub fn parse_client_command(text: &str) -> Option<ClientCommand> {
    let v: Value = serde_json::from_str(text).ok()?;
    let command = v.get("command")?.as_str()?;
    let message_id = v
        .get("message_id")
        .filter(|id| id.is_string() || id.is_number())
        .cloned();
    Some(match command {
        "auth" => ClientCommand::Auth { message_id },
        "auth/logout" => ClientCommand::Logout,
        _ => ClientCommand::Other { message_id },
    })
}

/// How MA answered a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `result.authenticated` is `true`: logged in with the user's role.
    Success(Role),
    /// Anything else: an error reply, `authenticated` not `true`, no result.
    Failure,
}

/// MA's reply to a command: its `message_id` and whether it is a successful login.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub message_id: Value,
    pub outcome: Outcome,
}

/// Parse a text from MA (`None`: not a JSON object with a string or number `message_id`, or
/// too large to be an `auth` reply).
pub fn parse_reply(text: &str) -> Option<Reply> {
    if text.len() > MAX_REPLY_LEN || !text.contains("message_id") {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    let message_id = v
        .get("message_id")
        .filter(|id| id.is_string() || id.is_number())?
        .clone();
    let error = v.get("error_code").is_some() || v.get("details").is_some();
    let result = v.get("result");
    let authenticated = result.and_then(|r| r.get("authenticated")) == Some(&Value::Bool(true));
    let outcome = if authenticated && !error {
        let role = result
            .and_then(|r| r.get("user"))
            .and_then(|u| u.get("role"))
            .and_then(Value::as_str);
        Outcome::Success(Role::parse(role))
    } else {
        Outcome::Failure
    };
    Some(Reply {
        message_id,
        outcome,
    })
}

/// An `auth` command awaiting MA's reply.
#[derive(Debug, Clone)]
struct Pending {
    message_id: Value,
    since: Instant,
    /// The client also used this id for another command: whatever comes back under it cannot
    /// be told apart, so it counts as a failure.
    tainted: bool,
}

/// One session's login, as MA confirmed it.
#[derive(Debug, Clone, Default)]
pub struct SessionAuth {
    role: Option<Role>,
    pending: VecDeque<Pending>,
}

impl SessionAuth {
    pub fn new() -> SessionAuth {
        SessionAuth::default()
    }

    /// The role MA confirmed; `None`: not authenticated.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// `auth` commands awaiting MA's reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest `auth` without a reply expires ([`SessionAuth::handle_timeout`]).
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.since + PENDING_TTL).min()
    }

    /// Time passes: an `auth` MA never answered is forgotten, and the session logged out
    /// (its reply may have been a failure we could not read).
    pub fn handle_timeout(&mut self, now: Instant) -> Change {
        let before = self.pending.len();
        self.pending.retain(|p| now < p.since + PENDING_TTL);
        if self.pending.len() < before {
            return self.log_out("MA did not answer an auth command in time");
        }
        Change::None
    }

    /// A text the client sent on `ma-api` (forwarded to MA whatever this says).
    pub fn handle_client_text(&mut self, now: Instant, text: &str) -> Change {
        let expired = self.handle_timeout(now);
        // Every command that matters names `auth`, unless spelled with escapes; while an
        // `auth` is pending every command is looked at, for ids used twice.
        let may_matter = text.contains("auth") || text.contains("\\u");
        if !may_matter && self.pending.is_empty() {
            return expired;
        }
        let change = match parse_client_command(text) {
            Some(ClientCommand::Auth {
                message_id: Some(id),
            }) if self.pending.len() < MAX_PENDING => {
                self.pending.push_back(Pending {
                    message_id: id,
                    since: now,
                    tainted: false,
                });
                Change::None
            }
            Some(ClientCommand::Auth { message_id: None }) => {
                self.log_out("an auth command without a usable message_id")
            }
            Some(ClientCommand::Auth { .. }) => {
                self.log_out(&format!("more than {MAX_PENDING} auth commands unanswered"))
            }
            Some(ClientCommand::Logout) => self.log_out("the client logged out"),
            Some(ClientCommand::Other {
                message_id: Some(id),
            }) => {
                for p in self.pending.iter_mut().filter(|p| p.message_id == id) {
                    p.tainted = true;
                }
                Change::None
            }
            Some(ClientCommand::Other { message_id: None }) | None => Change::None,
        };
        if change == Change::None {
            expired
        } else {
            change
        }
    }

    /// A text MA sent on this session's `ma-api` socket.
    pub fn handle_ma_text(&mut self, now: Instant, text: &str) -> Change {
        let expired = self.handle_timeout(now);
        if self.pending.is_empty() {
            return expired;
        }
        let Some(reply) = parse_reply(text) else {
            return expired;
        };
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.message_id == reply.message_id)
        else {
            return expired;
        };
        let pending = self.pending.remove(i).expect("found");
        match reply.outcome {
            Outcome::Success(_) if pending.tainted => {
                self.log_out("the auth command's message_id was used twice")
            }
            Outcome::Success(role) => {
                self.role = Some(role);
                Change::LoggedIn(role)
            }
            Outcome::Failure => self.log_out("MA refused the login"),
        }
    }

    fn log_out(&mut self, why: &str) -> Change {
        self.role = None;
        Change::LoggedOut(why.to_string())
    }
}

/// A guest's Sendspin text: a `client/hello` whose `payload.supported_roles` is a list gets
/// exactly `["player@v1"]` there, everything else in it kept (the rewritten text); any other
/// text, malformed JSON included, stays as it is (`None`).
pub fn guest_hello(text: &str) -> Option<String> {
    // The type names `hello`, unless spelled with escapes.
    if !text.contains("hello") && !text.contains("\\u") {
        return None;
    }
    let mut v: Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "client/hello" {
        return None;
    }
    let roles = v.get_mut("payload")?.get_mut("supported_roles")?;
    if !roles.is_array() {
        return None;
    }
    *roles = Value::Array(vec![Value::String(GUEST_ROLES.into())]);
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn auth(id: Value) -> String {
        json!({"command": "auth", "args": {"token": "t"}, "message_id": id}).to_string()
    }

    fn success(id: Value, role: &str) -> String {
        json!({"message_id": id, "result": {"authenticated": true,
               "user": {"user_id": "u1", "username": "x", "role": role}}})
        .to_string()
    }

    fn failure(id: Value) -> String {
        json!({"message_id": id, "error_code": 20, "details": "Authentication failed"}).to_string()
    }

    #[test]
    fn replies_are_parsed() {
        assert_eq!(
            parse_reply(&success(json!("a1"), "admin")),
            Some(Reply {
                message_id: json!("a1"),
                outcome: Outcome::Success(Role::Admin)
            })
        );
        assert_eq!(
            parse_reply(&success(json!(7), "guest")).unwrap().outcome,
            Outcome::Success(Role::Guest)
        );
        // An unknown or missing role is the least privileged one.
        assert_eq!(
            parse_reply(&success(json!(7), "overlord")).unwrap().outcome,
            Outcome::Success(Role::Guest)
        );
        assert_eq!(
            parse_reply(r#"{"message_id":7,"result":{"authenticated":true}}"#)
                .unwrap()
                .outcome,
            Outcome::Success(Role::Guest)
        );
        for text in [
            failure(json!(7)),
            json!({"message_id": 7, "details": "no"}).to_string(),
            json!({"message_id": 7, "result": {"authenticated": false}}).to_string(),
            json!({"message_id": 7, "result": {"authenticated": "true"}}).to_string(),
            json!({"message_id": 7, "result": [1, 2]}).to_string(),
            json!({"message_id": 7, "result": {"authenticated": true}, "error_code": 1})
                .to_string(),
        ] {
            assert_eq!(
                parse_reply(&text).unwrap().outcome,
                Outcome::Failure,
                "{text}"
            );
        }
        for text in [
            "not json",
            r#"{"event":"player_updated"}"#,
            r#"{"message_id":{"a":1},"result":{"authenticated":true}}"#,
            r#"[{"message_id":1}]"#,
        ] {
            assert_eq!(parse_reply(text), None, "{text}");
        }
        let huge = json!({"message_id": 7, "result": {"authenticated": true,
                          "pad": "x".repeat(MAX_REPLY_LEN)}});
        assert_eq!(parse_reply(&huge.to_string()), None);
    }

    #[test]
    fn client_commands_are_parsed() {
        assert_eq!(
            parse_client_command(&auth(json!(3))),
            Some(ClientCommand::Auth {
                message_id: Some(json!(3))
            })
        );
        assert_eq!(
            parse_client_command(r#"{"command":"\u0061uth","message_id":"x"}"#),
            Some(ClientCommand::Auth {
                message_id: Some(json!("x"))
            })
        );
        assert_eq!(
            parse_client_command(r#"{"command":"auth","message_id":[1]}"#),
            Some(ClientCommand::Auth { message_id: None })
        );
        assert_eq!(
            parse_client_command(r#"{"command":"auth/logout","message_id":1}"#),
            Some(ClientCommand::Logout)
        );
        assert_eq!(
            parse_client_command(r#"{"command":"players/all","message_id":1}"#),
            Some(ClientCommand::Other {
                message_id: Some(json!(1))
            })
        );
        assert_eq!(parse_client_command("{"), None);
    }

    #[test]
    fn only_a_matching_reply_from_ma_logs_in() {
        let now = Instant::now();
        let mut a = SessionAuth::new();
        // A reply nobody asked for is ignored, even a perfect one.
        assert_eq!(
            a.handle_ma_text(now, &success(json!(1), "admin")),
            Change::None
        );
        assert_eq!(a.role(), None);
        // The client's own claims never count: only MA's side is read for replies.
        assert_eq!(a.handle_client_text(now, &auth(json!(1))), Change::None);
        assert_eq!(
            a.handle_client_text(now, &success(json!(1), "admin")),
            Change::None
        );
        assert_eq!(a.role(), None);
        // A reply with another id does not match; ids compare as JSON values.
        assert_eq!(
            a.handle_ma_text(now, &success(json!("1"), "admin")),
            Change::None
        );
        assert_eq!(a.role(), None);
        assert_eq!(
            a.handle_ma_text(now, &success(json!(1), "admin")),
            Change::LoggedIn(Role::Admin)
        );
        assert_eq!(a.role(), Some(Role::Admin));
        assert_eq!(a.pending(), 0);
        // The same reply again matches nothing.
        assert_eq!(
            a.handle_ma_text(now, &success(json!(1), "guest")),
            Change::None
        );
        assert_eq!(a.role(), Some(Role::Admin));
    }

    #[test]
    fn a_failed_auth_or_a_logout_logs_out() {
        let now = Instant::now();
        let mut a = SessionAuth::new();
        a.handle_client_text(now, &auth(json!("a")));
        a.handle_ma_text(now, &success(json!("a"), "user"));
        assert_eq!(a.role(), Some(Role::User));
        a.handle_client_text(now, &auth(json!("b")));
        assert_eq!(a.role(), Some(Role::User), "still in until MA answers");
        assert!(matches!(
            a.handle_ma_text(now, &failure(json!("b"))),
            Change::LoggedOut(_)
        ));
        assert_eq!(a.role(), None);

        a.handle_client_text(now, &auth(json!("c")));
        a.handle_ma_text(now, &success(json!("c"), "admin"));
        assert_eq!(a.role(), Some(Role::Admin));
        // Logout counts at once, before MA answers it.
        assert!(matches!(
            a.handle_client_text(now, r#"{"command":"auth/logout","message_id":"d"}"#),
            Change::LoggedOut(_)
        ));
        assert_eq!(a.role(), None);
    }

    #[test]
    fn untrackable_auth_commands_log_out() {
        let now = Instant::now();
        let mut a = SessionAuth::new();
        for i in 0..MAX_PENDING {
            assert_eq!(a.handle_client_text(now, &auth(json!(i))), Change::None);
        }
        a.handle_ma_text(now, &success(json!(0), "admin"));
        assert_eq!(a.role(), Some(Role::Admin));
        for i in MAX_PENDING..MAX_PENDING + 2 {
            a.handle_client_text(now, &auth(json!(i)));
        }
        assert_eq!(a.pending(), MAX_PENDING, "never more than the bound");
        assert_eq!(a.role(), None, "an auth beyond the bound logs out");
        // Its reply cannot log in: it was never tracked.
        a.handle_ma_text(now, &success(json!(MAX_PENDING + 1), "admin"));
        assert_eq!(a.role(), None);

        // No usable message_id, or escapes hiding the command: still seen.
        let mut b = SessionAuth::new();
        b.handle_client_text(now, &auth(json!(1)));
        b.handle_ma_text(now, &success(json!(1), "admin"));
        b.handle_client_text(now, r#"{"command":"auth","args":{}}"#);
        assert_eq!(b.role(), None);
        b.handle_client_text(now, &auth(json!(2)));
        b.handle_ma_text(now, &success(json!(2), "admin"));
        b.handle_client_text(now, r#"{"command":"\u0061uth\/logout"}"#);
        assert_eq!(b.role(), None);
    }

    #[test]
    fn an_id_reused_by_another_command_or_left_unanswered_fails() {
        let now = Instant::now();
        let mut a = SessionAuth::new();
        a.handle_client_text(now, &auth(json!(5)));
        // The client asks something else under the same id: MA's answer to that could echo
        // whatever the client chose, so the id no longer proves anything.
        a.handle_client_text(now, r#"{"command":"config/echo","message_id":5}"#);
        assert!(matches!(
            a.handle_ma_text(now, &success(json!(5), "admin")),
            Change::LoggedOut(_)
        ));
        assert_eq!(a.role(), None);

        let mut b = SessionAuth::new();
        b.handle_client_text(now, &auth(json!(1)));
        b.handle_ma_text(now, &success(json!(1), "admin"));
        b.handle_client_text(now, &auth(json!(2)));
        assert_eq!(b.deadline(), Some(now + PENDING_TTL));
        assert_eq!(b.handle_timeout(now + PENDING_TTL / 2), Change::None);
        assert!(matches!(
            b.handle_timeout(now + PENDING_TTL),
            Change::LoggedOut(_)
        ));
        assert_eq!((b.role(), b.pending(), b.deadline()), (None, 0, None));
    }

    #[test]
    fn a_guest_hello_keeps_every_number_exactly() {
        // Found by the hello fuzz target: in a hello with a 61-digit number, the rewritten
        // text carried 6.666666666666667e60, which serde_json's default float parser read
        // back one ulp off (6.666666666666666e60): "everything else kept" did not hold.
        let hello = r#"{"type":"client/hello","payload":{"supported_roles":[],"r":6666666666666666666666666666666666666666666666666666666648000,"f":6.666666666666667e60,"g":0.30000000000000004}}"#;
        let original: Value = serde_json::from_str(hello).unwrap();
        let out = guest_hello(hello).unwrap();
        let rewritten: Value = serde_json::from_str(&out).unwrap();
        for key in ["r", "f", "g"] {
            assert_eq!(
                rewritten["payload"][key], original["payload"][key],
                "{key}: {out}"
            );
        }
        assert_eq!(guest_hello(&out).as_deref(), Some(out.as_str()));
    }

    #[test]
    fn a_guest_hello_asks_for_the_player_role_only() {
        let hello = json!({"type": "client/hello", "payload": {
            "client_id": "c1", "name": "Phone", "version": 1,
            "supported_roles": ["controller@v1", "player@v1", "metadata@v1"],
            "player_support": {"supported_formats": [{"codec": "opus"}]}}});
        let out: Value = serde_json::from_str(&guest_hello(&hello.to_string()).unwrap()).unwrap();
        let mut want = hello.clone();
        want["payload"]["supported_roles"] = json!(["player@v1"]);
        assert_eq!(out, want, "every other field kept");
        // Key order does not matter, values do; escapes are seen through.
        let reordered = r#"{"payload":{"supported_roles":["controller@v1"],"x":[1,{"y":null}]},"type":"client\/hello"}"#;
        let out: Value = serde_json::from_str(&guest_hello(reordered).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"type": "client/hello",
                   "payload": {"supported_roles": ["player@v1"], "x": [1, {"y": null}]}})
        );
        let escaped = r#"{"type":"client/hell\u006f","payload":{"supported_roles":[]}}"#;
        assert!(guest_hello(escaped).is_some());
        // Everything else is left alone.
        for text in [
            r#"{"type":"client/hello","payload":{"supported_roles":"controller@v1"}}"#,
            r#"{"type":"client/hello","payload":{}}"#,
            r#"{"type":"client/hello"}"#,
            r#"{"type":"client/state","payload":{"supported_roles":["controller@v1"]}}"#,
            r#"{"type":"auth","token":"hello"}"#,
            r#"{"type":"client/hello","payload":{"supported_roles":["x"]"#,
            "hello",
            "[1,2]",
        ] {
            assert_eq!(guest_hello(text), None, "{text}");
        }
    }
}
