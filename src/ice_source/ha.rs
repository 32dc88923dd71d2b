//! One conversation with Home Assistant's WebSocket API that asks for Home Assistant Cloud's
//! ICE servers (docs/protocol.md#ice-servers-from-home-assistant-cloud). No socket and no
//! clock: it reads HA's text messages and says what to send next; the deadline is
//! [`super::IceSource`]'s.
//!
//! `auth_required` → send `auth` with the token → `auth_ok` (`auth_invalid`: the token is
//! refused) → `{"id":1,"type":"cloud/status"}` → when `logged_in` and `active_subscription`,
//! `{"id":2,"type":"cloud/webrtc/ice_servers"}` → its `result` is the list.

use serde_json::{json, Value};

use super::{FetchError, Secret};
use crate::signaling::protocol::escaped;

const STATUS_ID: u64 = 1;
const SERVERS_ID: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for `auth_required`.
    Hello,
    /// `auth` sent, waiting for `auth_ok`.
    Auth,
    /// `cloud/status` sent.
    Status,
    /// `cloud/webrtc/ice_servers` sent.
    Servers,
    Done,
}

/// What to do after a message from HA.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Send this text.
    Send(String),
    /// Nothing to send; wait for the next message.
    Wait,
    /// The ICE servers (an array, not validated yet).
    Done(Value),
}

#[derive(Debug)]
pub struct HaExchange {
    token: Secret,
    step: Step,
}

impl HaExchange {
    pub fn new(token: Secret) -> HaExchange {
        HaExchange {
            token,
            step: Step::Hello,
        }
    }

    /// A text message from HA.
    pub fn handle_text(&mut self, text: &str) -> Result<Reply, FetchError> {
        let malformed = |why: &str| FetchError::Malformed(format!("{why}: {}", escaped(text, 120)));
        let msg: Value = serde_json::from_str(text).map_err(|_| malformed("not JSON"))?;
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or_default();
        match (self.step, kind) {
            (Step::Hello, "auth_required") => {
                self.step = Step::Auth;
                let auth = json!({"type": "auth", "access_token": self.token.expose()});
                Ok(Reply::Send(auth.to_string()))
            }
            (Step::Auth, "auth_ok") => {
                self.step = Step::Status;
                Ok(Reply::Send(
                    json!({"id": STATUS_ID, "type": "cloud/status"}).to_string(),
                ))
            }
            (Step::Auth, "auth_invalid") => {
                self.step = Step::Done;
                let message = msg.get("message").and_then(Value::as_str).unwrap_or("");
                Err(FetchError::AuthInvalid(escaped(message, 120)))
            }
            (Step::Status, "result") if id_of(&msg) == Some(STATUS_ID) => {
                let status = result_of(&msg, "cloud/status")?;
                let flag = |k: &str| status.get(k).and_then(Value::as_bool).unwrap_or(false);
                if !status.is_object() {
                    return Err(malformed("cloud/status result is not an object"));
                }
                if !flag("logged_in") {
                    self.step = Step::Done;
                    return Err(FetchError::NotLoggedIn);
                }
                if !flag("active_subscription") {
                    self.step = Step::Done;
                    return Err(FetchError::NoSubscription);
                }
                self.step = Step::Servers;
                Ok(Reply::Send(
                    json!({"id": SERVERS_ID, "type": "cloud/webrtc/ice_servers"}).to_string(),
                ))
            }
            (Step::Servers, "result") if id_of(&msg) == Some(SERVERS_ID) => {
                let servers = result_of(&msg, "cloud/webrtc/ice_servers")?;
                self.step = Step::Done;
                Ok(Reply::Done(servers))
            }
            // Anything else (an event, a result for another id, a repeated hello) is not for
            // us; the conversation's deadline ends a server that never answers.
            (Step::Done, _) => Err(malformed("message after the end of the exchange")),
            _ => Ok(Reply::Wait),
        }
    }
}

fn id_of(msg: &Value) -> Option<u64> {
    msg.get("id").and_then(Value::as_u64)
}

/// The `result` of a successful command, or why the command failed.
fn result_of(msg: &Value, command: &str) -> Result<Value, FetchError> {
    if msg.get("success").and_then(Value::as_bool) != Some(true) {
        let error = msg.get("error");
        let text = |k: &str| {
            error
                .and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        return Err(FetchError::CommandFailed(format!(
            "{command}: {} {}",
            escaped(text("code"), 64),
            escaped(text("message"), 120)
        )));
    }
    Ok(msg.get("result").cloned().unwrap_or(Value::Null))
}
