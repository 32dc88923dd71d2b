//! A short blocking run of [`IceSource`] for the `id` command: one fetch from the configured
//! provider, so the command can say which mode sessions would get. Its own mio `Poll` and
//! [`Connections`], like the gateway loop's, for at most [`FETCH_DEADLINE`].

use std::io;
use std::sync::Arc;
use std::time::Instant;

use mio::{Events, Poll, Token, Waker};
use tungstenite::Message;

use super::connections::{Connections, Data, End, Event};
use crate::config::GatewayConfig;
use crate::ice_source::{Connect, IceMode, Output, FETCH_DEADLINE, HA_MAX_MESSAGE};
use crate::machine::{Machine, Next};
use crate::net::link::ws_config;

const WAKER: Token = Token(0);

/// The mode sessions would get now, and a note when the provider did not answer in time.
pub fn probe(config: &GatewayConfig) -> Result<(IceMode, Option<String>), String> {
    let start = Instant::now();
    let mut ice = config.ice_source(start);
    if ice.mode_known() {
        return Ok((ice.mode(), None));
    }
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| e.to_string())?);
    let tls = config.tls_client_config()?;
    let mut conns: Connections<()> =
        Connections::new(poll.registry(), waker, 1, tls).map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(16);
    let give_up = start + FETCH_DEADLINE;
    while !ice.mode_known() {
        let now = Instant::now();
        if now >= give_up {
            let note = format!("the provider did not answer within {FETCH_DEADLINE:?}");
            return Ok((ice.mode(), Some(note)));
        }
        ice.handle_timeout(now);
        loop {
            while let Some(((), event)) = conns.poll_event() {
                match event {
                    Event::Opened => ice.handle_opened(now),
                    Event::Ended(End::Closed { .. }) => ice.handle_closed(now, None),
                    Event::Ended(end) => ice.handle_closed(now, Some(&end.describe("-"))),
                }
            }
            match ice.poll_output() {
                Next::Output(Output::Connect(Connect::WebSocket(url))) => {
                    let ws = ws_config(HA_MAX_MESSAGE, HA_MAX_MESSAGE);
                    conns.open_websocket((), &url, ws)
                }
                Next::Output(Output::Connect(Connect::Stream(url))) => conns.open_stream((), &url),
                Next::Output(Output::SendText(t)) => {
                    conns.send((), Message::text(t));
                }
                Next::Output(Output::Write(b)) => {
                    conns.write((), &b);
                }
                Next::Output(Output::Close) => conns.close((), None),
                Next::Output(Output::Servers { .. }) => {}
                Next::Timeout(_) => break,
            }
        }
        conns.flush();
        if ice.mode_known() {
            break;
        }
        let wait = give_up.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
        for event in events.iter() {
            let token = event.token();
            if token == WAKER {
                conns.on_dns();
                continue;
            }
            if !conns.on_ready(token) {
                continue;
            }
            let now = Instant::now();
            while conns.read_one(token, |(), data| match data {
                Data::Message(Message::Text(t)) => ice.handle_text(now, t.as_str()),
                Data::Bytes(b) => ice.handle_bytes(now, b),
                Data::Message(_) => {}
            }) {}
        }
    }
    Ok((ice.mode(), None))
}
