//! One `GET` of an ICE server list from an HTTP or HTTPS URL (`MA_ICE_SERVERS_URL`), over
//! the HTTP proxy's response parser ([`HttpConn`]): no socket, no clock.

use serde_json::Value;

use super::FetchError;
use crate::config::WsUrl;
use crate::http_proxy::client::{HttpConn, Limits, Progress};
use crate::http_proxy::request::{Method, ProxyRequest};

/// Largest response body (an ICE server list is well under 1 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest response head.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug)]
pub struct UrlExchange {
    path: String,
    conn: HttpConn,
}

impl UrlExchange {
    pub fn new(url: &WsUrl) -> UrlExchange {
        let limits = Limits {
            max_head: MAX_HEAD,
            max_body: MAX_BODY,
        };
        UrlExchange {
            path: url.path_and_query.clone(),
            conn: HttpConn::with_limits(url.host_port(), false, limits),
        }
    }

    /// The connection is established: the request bytes to write.
    pub fn request(&mut self) -> Vec<u8> {
        let req = ProxyRequest {
            id: String::new(),
            method: Method::Get,
            path: self.path.clone(),
            headers: vec![("Accept", "application/json".to_string())],
        };
        self.conn.start(&req)
    }

    /// Bytes of the response: `Some(list)` once it is complete.
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<Option<Value>, FetchError> {
        let progress = self.conn.feed(data).map_err(malformed)?;
        done_list(progress)
    }

    /// The server closed the connection (a response without a length ends here).
    pub fn handle_eof(&mut self) -> Result<Value, FetchError> {
        match self.conn.feed_eof().map_err(malformed)? {
            done @ Progress::Done(_) => {
                done_list(done)?.ok_or_else(|| FetchError::Malformed("no response".into()))
            }
            Progress::NeedMore => Err(FetchError::Malformed("response cut short".into())),
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> FetchError {
    FetchError::Malformed(e.to_string())
}

fn done_list(progress: Progress) -> Result<Option<Value>, FetchError> {
    let response = match progress {
        Progress::NeedMore => return Ok(None),
        Progress::Done(r) => r,
    };
    if response.status != 200 {
        return Err(FetchError::CommandFailed(format!(
            "HTTP status {}",
            response.status
        )));
    }
    serde_json::from_slice(&response.body)
        .map(Some)
        .map_err(|e| FetchError::Malformed(format!("body is not JSON: {e}")))
}
