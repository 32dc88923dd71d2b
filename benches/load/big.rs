//! `--big`: large replies, one at a time, as a user opening a big library view or album art
//! sees them (issue: no retransmission-timer stalls). Per kind, `--big-repeats` times:
//!
//! - a 1 MB and a 3 MB text reply on `ma-api` (chunked by the gateway, reassembled here),
//! - a 3 MB image on `http_proxy` (header, then binary frames).
//!
//! Each is timed from the request to its last byte and checked byte for byte. The client's
//! UDP receive buffer is `--client-rcvbuf` (Linux's default, 212 992 bytes, unless given), so a
//! burst larger than that loses its tail, as it would at a phone. The slowest repetition must
//! be within 2× the median. With `--path-delay` / `--path-loss` the client reaches the gateway
//! through the test kit's lossy UDP relay (round trip = twice the delay).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use ma_webrtc_gateway::driver::connect::Connection;
use ma_webrtc_gateway::remote_client::{ClientEvent, ClientOptions};
use ma_webrtc_gateway::testkit::path::{LossyPath, PathConfig};
use serde_json::{json, Value};

use super::{summary, Codec, Plan, KIND_DOWN};

/// The slowest repetition may take at most this many times the median.
const SPREAD_LIMIT: f64 = 2.0;

/// Time one `ma-api` reply of `size` bytes (the echo server's `down` command).
fn api_reply(c: &mut Connection, plan: &Plan, size: usize, seq: u64) -> Result<f64, String> {
    let t0 = Instant::now();
    let request = json!({"bench": "down", "session": seq, "count": 1, "size": size});
    c.send_text(&request.to_string(), plan.timeout)?;
    let got = match c.recv(plan.timeout)? {
        ClientEvent::Text(t) => t.into_bytes(),
        ClientEvent::Binary(b) => b,
        other => return Err(format!("unexpected {other:?}")),
    };
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match Codec::new(size).check(seq as u32, &got) {
        Ok(p) if p.kind == KIND_DOWN => Ok(ms),
        _ => Err(format!("the {size}-byte reply arrived damaged")),
    }
}

/// Time one image of `size` bytes on `http_proxy` (the stand-in's `/imageproxy?bytes=N`).
fn image(c: &mut Connection, plan: &Plan, size: usize, seq: u64) -> Result<f64, String> {
    let t0 = Instant::now();
    let request = json!({"type": "http-proxy-request", "id": format!("big-{seq}"),
        "method": "GET", "path": format!("/imageproxy?bytes={size}"), "headers": {}});
    c.send_on(
        "http_proxy",
        false,
        request.to_string().as_bytes(),
        plan.timeout,
    )?;
    let (binary, head) = c.recv_on("http_proxy", plan.timeout)?;
    let head: Value = serde_json::from_slice(&head).map_err(|e| e.to_string())?;
    if binary || head["status"].as_u64() != Some(200) || head["size"].as_u64() != Some(size as u64)
    {
        return Err(format!("unexpected image response head {head}"));
    }
    let mut got = 0usize;
    while got < size {
        let (binary, frame) = c.recv_on("http_proxy", plan.timeout)?;
        if !binary {
            return Err("a text message inside an image body".into());
        }
        // The stand-in's body is i % 251 at offset i.
        if frame
            .iter()
            .enumerate()
            .any(|(k, b)| *b != ((got + k) % 251) as u8)
        {
            return Err(format!("image byte damaged near offset {got}"));
        }
        got += frame.len();
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

/// Run the three kinds, through a lossy path to the gateway's UDP address if given; true when
/// every one held the bound.
pub fn run(
    plan: &Plan,
    repeats: u64,
    client_rcvbuf: usize,
    path: Option<(std::net::SocketAddr, PathConfig)>,
) -> Result<bool, String> {
    let mut out = io::stdout().lock();
    let lossy = match path {
        Some((gateway, cfg)) => {
            let _ = writeln!(
                out,
                "big: through a lossy path: {:?} each way, {:.1} % loss each way",
                cfg.delay,
                cfg.loss * 100.0
            );
            Some(LossyPath::start(gateway, cfg, 0x6b1d).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let options = ClientOptions {
        receive_buffer: Some(client_rcvbuf),
        gateway_via: lossy.as_ref().map(LossyPath::addr),
        ..ClientOptions::default()
    };
    let mut c = plan.greeted(options)?;
    c.open_channel("http_proxy", plan.timeout)?;
    let _ = writeln!(
        out,
        "big: {repeats} repetitions each, client UDP receive buffer {client_rcvbuf} bytes asked"
    );
    let mut ok = true;
    let kinds: [(&str, usize, bool); 3] = [
        ("ma-api reply 1 MB", 1_000_000, false),
        ("ma-api reply 3 MB", 3_000_000, false),
        ("http_proxy image 3 MB", 3_000_000, true),
    ];
    let mut seq = 0u64;
    for (name, size, is_image) in kinds {
        let mut times = Vec::new();
        for _ in 0..repeats {
            seq += 1;
            let t = if is_image {
                image(&mut c, plan, size, seq)
            } else {
                api_reply(&mut c, plan, size, seq)
            };
            times.push(t.map_err(|e| format!("{name}: {e}"))?);
            // Let the path go idle between repetitions, as between user actions.
            std::thread::sleep(Duration::from_millis(50));
        }
        times.sort_by(f64::total_cmp);
        let median = ma_webrtc_gateway::stats::percentile(&times, 0.5);
        let max = times.last().copied().unwrap_or(f64::NAN);
        let held = max <= SPREAD_LIMIT * median;
        ok &= held;
        let _ = writeln!(
            out,
            "big: {name}, ms: {}; slowest {:.2}x the median (bound {SPREAD_LIMIT}x) {}",
            summary(&mut times),
            max / median,
            if held { "held" } else { "EXCEEDED" }
        );
    }
    c.close();
    let _ = writeln!(out, "{}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}
