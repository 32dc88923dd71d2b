//! IPv6 with the real gateway binary and the project's own client (the `connect` command's
//! `Connection`): over `::1`, and inside a network namespace the test creates, where the
//! gateway binds the wildcard and must pick the stable global address (2001:db8::1) over a
//! deprecated one and the link-local ones, and the client reaches it from 2001:db8::2.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::stack::{expect_server_info, start_gateway, start_signal, WAIT};
use common::{ma_standin::MaStandin, temp_dir};
use ma_webrtc_gateway::config::WsUrl;
use ma_webrtc_gateway::driver::connect::Connection;

/// Signaling server, MA stand-in, a gateway with `udp_bind`, and a client bound at
/// `client_bind` that must receive MA's `server_info` and echo a message.
fn connect_over(udp_bind: &str, client_bind: &str) -> Vec<String> {
    let (mut signal, port) = start_signal();
    let ma = MaStandin::start();
    let extra = [("MA_UDP_BIND", udp_bind.to_string())];
    let (mut gateway, remote_id) = start_gateway(port, &ma, &temp_dir("ipv6"), &extra);
    let url = WsUrl::parse(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
    let bind: SocketAddr = client_bind.parse().unwrap();
    let mut c = Connection::open(&url, None, &remote_id, bind, WAIT).expect("the client connects");
    expect_server_info(&mut c);
    c.send_text(r#"{"message_id":"v6","command":"echo"}"#, WAIT)
        .unwrap();
    let echoed = c.recv_text(WAIT).unwrap();
    assert!(echoed.contains("\"v6\""), "{echoed}");
    c.close();
    let log = gateway.log();
    let _ = signal.log();
    log
}

#[test]
fn a_client_connects_over_ipv6_loopback() {
    let log = connect_over("[::1]:0", "[::1]:0");
    assert!(
        log.iter()
            .any(|l| l.contains("WebRTC host candidate [::1]:")),
        "{log:#?}"
    );
}

/// Run `f` on a thread of its own inside a new network namespace (the namespace belongs to
/// that thread and to the processes it starts). `None` when namespaces are not allowed here.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipped: cannot create a network namespace ({})",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(f())
    })
    .join()
    .unwrap()
}

fn ip(args: &str) {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("run ip");
    assert!(status.success(), "ip {args}");
}

#[test]
fn a_wildcard_bind_offers_the_stable_global_ipv6_address() {
    let log = in_new_netns(|| {
        ip("link set lo up");
        ip("link add v0 type veth peer name v1");
        ip("link set v0 up");
        ip("link set v1 up");
        // The gateway's side: a stable address, and a deprecated one it must not offer.
        ip("-6 addr add 2001:db8::1/64 dev v0 nodad");
        ip("-6 addr add 2001:db8::dead/64 dev v0 nodad preferred_lft 0");
        // The client's side, deprecated too, so the only stable address is the gateway's
        // (both live in this one namespace).
        ip("-6 addr add 2001:db8::2/64 dev v1 nodad preferred_lft 0");
        connect_over("0.0.0.0:0", "[2001:db8::2]:0")
    });
    let Some(log) = log else { return };
    let candidates: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("WebRTC host candidate"))
        .collect();
    assert!(
        candidates.iter().any(|l| l.contains("[2001:db8::1]:")),
        "{candidates:#?}"
    );
    assert!(
        !candidates
            .iter()
            .any(|l| l.contains("2001:db8::dead") || l.contains("fe80")),
        "{candidates:#?}"
    );
}
