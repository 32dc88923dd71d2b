//! Log output for operators (docs/design.md#logs): env_logger's readable lines, or with
//! `MA_LOG_FORMAT=json` one JSON object per line (`time`, `level`, `target`, `session`,
//! `message`) for log collectors.
//!
//! Lines about a session start with its id in brackets (`[id] …`, the convention of the
//! gateway core and `PeerSession`); the JSON form lifts it into `session`. Nothing secret is
//! ever handed to the logger (no tokens, no TURN credentials), so neither form filters.

use std::io::Write;

use serde_json::{json, Map, Value};

use crate::config::{bad, ConfigError};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(bad(
                "MA_LOG_FORMAT",
                "log-format",
                format!("{other:?} is not a log format (text or json)"),
            )),
        }
    }
}

/// Install the logger (`RUST_LOG` filters, `info` by default).
pub fn init(format: Format) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        Format::Text => builder.format_timestamp_millis(),
        Format::Json => builder.format(|buf, record| {
            let time = buf.timestamp_millis().to_string();
            let message = record.args().to_string();
            let line = json_line(&time, record.level().as_str(), record.target(), &message);
            writeln!(buf, "{line}")
        }),
    };
    builder.init();
}

/// The session id a message starts with (`[id] rest`), and the rest. Session ids are 1 to 64
/// characters from `[A-Za-z0-9_-]` (docs/protocol.md#signaling).
pub fn split_session(message: &str) -> (Option<&str>, &str) {
    let Some(inner) = message.strip_prefix('[') else {
        return (None, message);
    };
    let Some(end) = inner.find(']') else {
        return (None, message);
    };
    let id = &inner[..end];
    let valid = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match valid {
        true => (Some(id), inner[end + 1..].trim_start()),
        false => (None, message),
    }
}

/// One JSON log line (without the newline).
pub fn json_line(time: &str, level: &str, target: &str, message: &str) -> String {
    let (session, message) = split_session(message);
    let mut obj = Map::new();
    obj.insert("time".into(), json!(time));
    obj.insert("level".into(), json!(level));
    obj.insert("target".into(), json!(target));
    if let Some(id) = session {
        obj.insert("session".into(), json!(id));
    }
    obj.insert("message".into(), json!(message));
    Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(Format::parse("json").unwrap(), Format::Json);
        assert_eq!(Format::parse(" Text ").unwrap(), Format::Text);
        assert_eq!(Format::parse("xml").unwrap_err().var, "MA_LOG_FORMAT");
    }

    #[test]
    fn session_prefix_is_lifted() {
        assert_eq!(
            split_session("[a1-B_2] connected in 5 ms"),
            (Some("a1-B_2"), "connected in 5 ms")
        );
        assert_eq!(
            split_session("gateway starting"),
            (None, "gateway starting")
        );
        assert_eq!(split_session("[not an id] x"), (None, "[not an id] x"));
        assert_eq!(split_session("[] x"), (None, "[] x"));
        assert_eq!(split_session("[unclosed"), (None, "[unclosed"));
    }

    #[test]
    fn one_object_per_line() {
        let line = json_line(
            "2026-01-01T00:00:00.000Z",
            "INFO",
            "t",
            "[s1] said \"hi\"\nbye",
        );
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["session"], "s1");
        assert_eq!(v["message"], "said \"hi\"\nbye");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "t");
        let v: Value = serde_json::from_str(&json_line("t", "WARN", "x", "plain")).unwrap();
        assert!(v.get("session").is_none());
    }
}
