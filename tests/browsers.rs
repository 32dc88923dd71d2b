//! Real browsers as clients (issue 6): headless Chromium and headless Firefox load a test page
//! (`tests/browser/`: a remote transport written from docs/protocol.md, like the MA web app's)
//! from this test's HTTP server and run it against the real `signal` binary, the real gateway
//! binary and the MA stand-in. The page reports JSON to this test, which asserts it byte for
//! byte, and prints connection times, echo round trips and throughput as a benchmark.
//!
//! Each browser test re-executes itself inside a private network namespace
//! (`unshare -n`, loopback up, a default route on loopback for Firefox's default-address
//! lookup) so nothing can leave the machine. Without `unshare` (not root) it runs on the host
//! loopback, with flags and preferences that keep the browsers off the network.
//!
//! A missing browser skips the test (with a message) unless `CI` is set: then it fails.

mod common;
#[path = "common/http_standin.rs"]
mod http_standin;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::browser::{Browser, BrowserProc, PageServer};
use common::ma_standin::{self, MaStandin, Seen};
use common::stack::start_signal;
use common::{temp_dir, Proc};
use data_encoding::{BASE32_NOPAD, HEXLOWER, HEXUPPER};
use http_standin::{MaFront, SendspinStandin};
use ma_webrtc_gateway::stats::percentile;
use serde_json::{json, Value};

/// Set in the environment of the re-executed test that runs inside the namespace.
const IN_NETNS: &str = "BROWSER_TEST_IN_NETNS";
/// The whole run of one browser, inside the namespace.
const RUN_LIMIT: Duration = Duration::from_secs(150);
/// Each step the page waits for.
const STEP_MS: u64 = 15_000;
const WAIT: Duration = Duration::from_secs(20);
const BENCH_BYTES: usize = 8 * 1024 * 1024;
const BENCH_FRAME: usize = 16 * 1024;

/// The two browsers must not share the two cores while they measure.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn chromium() {
    run(Browser::Chromium, "chromium");
}

#[test]
fn firefox() {
    run(Browser::Firefox, "firefox");
}

/// Write straight to stderr: shown by `cargo test` even for a passing test.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn run(browser: Browser, test_name: &str) {
    let Some(exe) = browser.find() else {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
        let msg = format!(
            "{}: not installed (looked for {:?} on PATH)",
            browser.name(),
            browser.executables()
        );
        assert!(!ci, "{msg}, and CI is set: install it (see .ci/run)");
        say(&format!(
            "SKIPPED browser test {test_name}: {msg}; CI is not set"
        ));
        return;
    };
    if std::env::var_os(IN_NETNS).is_some() {
        return inner(browser, &exe, true);
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if netns_available() {
        reexec_in_netns(test_name);
    } else {
        say(&format!(
            "note: {test_name}: no private network namespace (unshare -n and ip need root); \
             running on the host loopback"
        ));
        inner(browser, &exe, false);
    }
}

/// The `ip` command (iproute2); /usr/sbin is not on every user's PATH.
fn ip_command() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d: PathBuf| d.join("ip"))
        .find(|p| p.is_file())
}

/// Whether a private network namespace can be made here (`unshare -n` needs root), unless
/// BROWSER_TEST_NO_NETNS is set (to try the host-loopback fallback).
fn netns_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if std::env::var_os("BROWSER_TEST_NO_NETNS").is_some() {
            return false;
        }
        let Some(ip) = ip_command() else {
            return false;
        };
        Command::new("unshare")
            .args(["-n", "--"])
            .arg(ip)
            .args(["link", "set", "lo", "up"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Run this same test again inside a fresh network namespace; its stdout comes back through
/// our captured output, its stderr (panics, the benchmark lines) goes straight through.
fn reexec_in_netns(test_name: &str) {
    let me = std::env::current_exe().unwrap();
    let mut child = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            // `src` matters: Firefox looks up its default address by routing to a public one.
            "\"$IP\" link set lo up && \"$IP\" route add default dev lo src 127.0.0.1 && exec \"$@\"",
            "sh",
        ])
        .env("IP", ip_command().unwrap())
        .arg(me)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run unshare");
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = reader.join().unwrap_or_default();
    print!("{output}");
    match status {
        Some(st) if st.success() && output.contains("test result: ok. 1 passed") => {}
        Some(st) => panic!("the browser test in the network namespace failed ({st}); see above"),
        None => panic!("the browser test in the network namespace did not end in time"),
    }
}

// ---- the stack ------------------------------------------------------------------------------

/// A gateway process and the Remote ID it registered.
struct Gateway {
    proc: Proc,
    remote_id: String,
}

impl Gateway {
    fn start(
        signal_port: u16,
        ma_url: &str,
        sendspin_url: &str,
        data: &Path,
        extra: &[(&str, String)],
    ) -> Gateway {
        let mut env = vec![
            (
                "MA_SIGNALING_URL",
                format!("ws://127.0.0.1:{signal_port}/ws"),
            ),
            ("MA_LOCAL_WS_URL", ma_url.to_string()),
            ("MA_SENDSPIN_URL", sendspin_url.to_string()),
            ("MA_DATA_DIR", data.display().to_string()),
            ("MA_UDP_BIND", "127.0.0.1:0".into()),
            ("MA_ICE_SERVERS", "[]".into()),
            ("MA_RECONNECT_MIN", "100ms".into()),
            ("MA_RECONNECT_MAX", "500ms".into()),
        ];
        env.extend(extra.iter().cloned());
        let mut proc = Proc::start(&[], &env);
        let registered = proc.wait_for_event("registered", WAIT);
        let remote_id = registered["remote_id"].as_str().unwrap().to_string();
        Gateway { proc, remote_id }
    }

    /// Its stdout events so far.
    fn events(&mut self) -> Vec<Value> {
        self.proc.events()
    }

    /// Everything it logged so far.
    fn log(&mut self) -> Vec<String> {
        self.proc.log()
    }
}

// ---- what the page gets and what must come back --------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    HEXLOWER.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

fn echo_texts() -> Vec<String> {
    [1usize, 100, 16 * 1024, 65_536, 65_537, 200_000, 256 * 1024]
        .iter()
        .map(|&size| {
            let t = ma_standin::sized_json(size, &json!(format!("up-{size}")));
            if t.len() == size {
                t
            } else {
                "x".repeat(size)
            }
        })
        .collect()
}

/// Repetitions of each large reply (`BROWSER_BIG_REPEATS`, 5 unless given).
fn big_repeats() -> usize {
    std::env::var("BROWSER_BIG_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

const DOWN_SIZES: [usize; 4] = [64 * 1024, 64 * 1024 + 1, 300_000, 1024 * 1024];
const SENDSPIN_SIZES: [usize; 5] = [1, 1000, 16 * 1024, 50_000, 65_535];
const IMAGE_PATH: &str = "/imageproxy?path=%2Fmedia%2Fcover.jpg&provider=filesystem&size=512";

fn pattern(size: usize, k: usize) -> Vec<u8> {
    (0..size).map(|j| ((j * 7 + k * 13) % 251) as u8).collect()
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| HEXUPPER.encode(&[*b]))
        .collect::<Vec<_>>()
        .join(":")
}

/// Pin-check cases the page runs in isolation; the expected outcome is our Rust reference's.
fn pin_cases() -> Vec<Value> {
    let sdp = |lines: &[&str]| {
        let mut s = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_string();
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s
    };
    let vector_fp = "80:9E:94:CD:2C:46:D0:30:B6:91:A7:AE:94:91:B1:C5:68:FB:A4:E8:8D:72:A7:68:D4:49:61:5D:38:69:66:F8";
    let vector_id = "QCPJJTJMI3IDBNURU6XJJENRYU";
    // A fingerprint whose base32 has a `2`, so its Remote ID has a `9`.
    let (nine_fp, nine_id) = (0u32..)
        .map(|i| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &i.to_le_bytes()))
        .map(|d| {
            (
                colon_hex(d.as_ref()),
                BASE32_NOPAD.encode(&d.as_ref()[..16]),
            )
        })
        .find(|(_, b32)| b32.contains('2'))
        .map(|(fp, b32)| (fp, b32.replace('2', "9")))
        .unwrap();
    let mut wrong_fp = vector_fp.to_string();
    wrong_fp.replace_range(0..2, "81");
    let good = format!("a=fingerprint:sha-256 {vector_fp}");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "spec vector",
            vector_id.into(),
            sdp(&["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", &good]),
        ),
        (
            "case-insensitive, other hashes ignored",
            vector_id.to_lowercase(),
            sdp(&[
                &format!("A=Fingerprint:SHA-256 {}", vector_fp.to_lowercase()),
                "a=fingerprint:sha-1 00:11:22",
                &good,
            ]),
        ),
        (
            "9 maps to 2",
            nine_id.clone(),
            sdp(&[&format!("a=fingerprint:sha-256 {nine_fp}")]),
        ),
        (
            "9 not mapped is another ID",
            nine_id.replace('9', "2"),
            sdp(&[&format!("a=fingerprint:sha-256 {nine_fp}")]),
        ),
        (
            "one wrong line among good ones",
            vector_id.into(),
            sdp(&[&good, &format!("a=fingerprint:sha-256 {wrong_fp}")]),
        ),
        (
            "only non-sha-256 lines",
            vector_id.into(),
            sdp(&["a=fingerprint:sha-1 00:11", "a=fingerprint:sha-384 AA:BB"]),
        ),
        ("no fingerprint", vector_id.into(), sdp(&[])),
        (
            "fingerprint shorter than 16 bytes",
            vector_id.into(),
            sdp(&["a=fingerprint:sha-256 80:9E:94:CD:2C:46:D0:30:B6:91:A7:AE:94:91:B1"]),
        ),
        ("ID of 25 characters", vector_id[..25].into(), sdp(&[&good])),
        (
            "ID with non-zero trailing bits",
            format!("{}V", &vector_id[..25]),
            sdp(&[&good]),
        ),
        (
            "legacy MA-XXXX-XXXX ID",
            "MA-ABCD-EFGH".into(),
            sdp(&[&good]),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, id, sdp)| {
            let expect = match ma_webrtc_gateway::identity::verify_answer_fingerprint(&sdp, &id) {
                Ok(()) => "ok",
                Err(_) => "PinError",
            };
            json!({"name": name, "remote_id": id, "sdp": sdp, "expect": expect})
        })
        .collect()
}

fn config(
    browser: Browser,
    signal_port: u16,
    remote_id: &str,
    fake_id: &str,
    netns: bool,
) -> Value {
    json!({
        "browser": browser.name(),
        "phases": ["selftest", "main", "pin", "restart"],
        "signal_url": format!("ws://127.0.0.1:{signal_port}/ws"),
        "remote_id": remote_id,
        "fake_remote_id": fake_id,
        // Firefox outside a namespace gathers no loopback candidate without a live capture.
        "fake_media": browser == Browser::Firefox && !netns,
        "timeout_ms": STEP_MS,
        "http_timeout_ms": 5_000,
        "restart_wait_ms": 20_000,
        "pin_cases": pin_cases(),
        "echo_texts": echo_texts(),
        "down": DOWN_SIZES.iter().map(|s| json!({"size": s, "id": format!("down-{s}")})).collect::<Vec<_>>(),
        "rtt_count": 200,
        "http": [
            {"path": IMAGE_PATH, "decode": true, "headers": {
                "Accept": "image/avif,image/webp,image/png,*/*",
                "Cookie": "session=secret",
                "X-Forwarded-For": "203.0.113.9",
                "Host": "evil.example",
            }},
            {"path": "/imageproxy?path=head", "method": "HEAD"},
            {"path": "/missing.png"},
            {"path": "//evil.example/x"},
            {"path": "/imageproxy?path=post", "method": "POST"},
        ],
        "sendspin_auth": json!({"type": "auth", "token": "t0k3n", "client_id": format!("browser-{}", browser.name())}).to_string(),
        "sendspin_sizes": SENDSPIN_SIZES,
        "bench_bytes": BENCH_BYTES,
        "bench_frame": BENCH_FRAME,
        "big_repeats": big_repeats(),
    })
}

// ---- the run inside the namespace ------------------------------------------------------------

/// Failed checks, all reported together.
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
}

fn inner(browser: Browser, exe: &Path, netns: bool) {
    let t_start = Instant::now();
    let deadline = t_start + RUN_LIMIT;
    let dir = temp_dir(&format!("browser-{}", browser.name()));

    let (_signal, signal_port) = start_signal();
    let ma = MaStandin::start();
    let front = MaFront::start(ma.port);
    let sendspin = SendspinStandin::start();
    let data = dir.join("gateway-data");
    std::fs::create_dir_all(&data).unwrap();
    let gw_start =
        |data: &Path| Gateway::start(signal_port, &front.url(), &sendspin.url(), data, &[]);
    let mut gw = gw_start(&data);
    let remote_id = gw.remote_id.clone();

    // A second gateway under a well-formed Remote ID that is not its certificate's.
    let fake_id = "QCPJJTJMI3IDBNURU6XJJENRYU";
    let fake_ma = MaStandin::start();
    let fake_data = dir.join("fake-data");
    std::fs::create_dir_all(&fake_data).unwrap();
    let fake_gw = Gateway::start(
        signal_port,
        &fake_ma.url(),
        &sendspin.url(),
        &fake_data,
        &[("MA_REMOTE_ID", fake_id.to_string())],
    );
    assert_eq!(fake_gw.remote_id, fake_id);

    let cfg = config(browser, signal_port, &remote_id, fake_id, netns);
    let page = PageServer::start(cfg.to_string());
    let t_launch = Instant::now();
    let b = BrowserProc::launch(browser, exe, &page.url(), &dir);

    let mut reports: HashMap<String, Value> = HashMap::new();
    let mut restart_ms = None;
    let mut first_gw_log: Vec<String> = Vec::new();
    let mut first_gw_events: Vec<Value> = Vec::new();
    let mut udp_drops = None;
    let mut stuck = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match page.reports.recv_timeout(left) {
            Ok(r) => {
                let phase = r["phase"].as_str().unwrap_or("?").to_string();
                println!("page report {phase}: {:.600}", r.to_string());
                match phase.as_str() {
                    "main" => {
                        let port = gw.log().iter().find_map(|l| {
                            let a = l.split("WebRTC host candidate ").nth(1)?;
                            a.split_whitespace().next()?.parse::<SocketAddr>().ok()
                        });
                        udp_drops = udp_rcvbuf_errors()
                            .map(|all| (all, port.and_then(|p| udp_socket_drops(p.port()))));
                        reports.insert(phase, r);
                    }
                    "restart-ready" => {
                        let t0 = Instant::now();
                        gw.proc.terminate(Duration::from_secs(10));
                        first_gw_events = gw.events();
                        first_gw_log = gw.log();
                        gw = gw_start(&data);
                        restart_ms = Some(t0.elapsed());
                    }
                    "done" | "fatal" => {
                        reports.insert(phase, r);
                        break;
                    }
                    _ => {
                        reports.insert(phase, r);
                    }
                }
            }
            Err(_) => {
                stuck = Some(format!(
                    "the page did not finish within {RUN_LIMIT:?} (phases reported: {:?})",
                    reports.keys().collect::<Vec<_>>()
                ));
                break;
            }
        }
    }
    let run_time = t_launch.elapsed();

    let mut c = Checks(Vec::new());
    if let Some(s) = stuck {
        c.0.push(s);
    }
    if let Some(f) = reports.get("fatal") {
        c.0.push(format!("the page failed to start: {f}"));
    }
    check_selftest(&mut c, reports.get("selftest"));
    let bench = check_main(
        &mut c,
        browser,
        reports.get("main"),
        &ma,
        &front,
        &sendspin,
        &[first_gw_events, gw.events()].concat(),
    );
    check_pin(&mut c, reports.get("pin"), &fake_ma);
    let bench = bench + &check_restart(&mut c, reports.get("restart"), restart_ms);

    let ua = reports
        .get("done")
        .and_then(|d| d["user_agent"].as_str())
        .unwrap_or("?")
        .to_string();
    // Stalls worth knowing about: SCTP retransmission timeouts of the gateway's sender (about
    // 1 s each) and, in the namespace, datagrams the kernel dropped on full receive buffers.
    let rto = [first_gw_log.as_slice(), gw.log().as_slice()]
        .concat()
        .iter()
        .filter(|l| l.contains("T3-rtx timed out"))
        .count();
    let drops = match (netns, udp_drops) {
        (true, Some((all, Some(gw)))) => format!(
            "; UDP datagrams dropped on full receive buffers by the main phase's end: {all} in all, {gw} of them at the gateway's socket"
        ),
        (true, Some((all, None))) => {
            format!("; UDP datagrams dropped on full receive buffers by the main phase's end: {all}")
        }
        _ => String::new(),
    };
    say(&format!(
        "browser benchmark, {} ({ua}), {} gateway build{}:\n{bench}  gateway SCTP retransmission timeouts: {rto}{drops}\n  whole browser run {:.1} s (browser start to last report)",
        browser.name(),
        match std::env::var("TEST_GATEWAY_BIN") {
            Ok(path) => format!("TEST_GATEWAY_BIN={path}"),
            Err(_) if cfg!(debug_assertions) => "debug".into(),
            Err(_) => "release".into(),
        },
        if netns { ", in a private network namespace" } else { ", host loopback" },
        run_time.as_secs_f64(),
    ));

    // Everything, for a closer look: kept when a check failed or BROWSER_TEST_KEEP is set.
    let keep = !c.0.is_empty() || std::env::var_os("BROWSER_TEST_KEEP").is_some();
    if keep {
        let _ = std::fs::write(
            dir.join("gateway-before-restart.log"),
            first_gw_log.join("\n"),
        );
        let _ = std::fs::write(dir.join("gateway.log"), gw.log().join("\n"));
        let _ = std::fs::write(dir.join("page.log"), page.logs.lock().unwrap().join("\n"));
        let _ = std::fs::write(
            dir.join("reports.json"),
            serde_json::to_string_pretty(&reports).unwrap_or_default(),
        );
        println!(
            "logs, reports and the browser's output kept in {}",
            dir.display()
        );
    }
    if !c.0.is_empty() {
        let logs = page.logs.lock().unwrap().join("\n");
        let tail = |log: &[String]| log[log.len().saturating_sub(150)..].join("\n");
        println!("---- page log ----\n{logs}");
        if !first_gw_log.is_empty() {
            println!(
                "---- gateway log before the restart (last 150 lines) ----\n{}",
                tail(&first_gw_log)
            );
        }
        println!(
            "---- gateway log (last 150 lines) ----\n{}",
            tail(&gw.log())
        );
        println!("---- browser output (tail) ----\n{}", b.log_tail(60));
        panic!(
            "{} failed {} check(s):\n  - {}",
            browser.name(),
            c.0.len(),
            c.0.join("\n  - ")
        );
    }
    drop(b);
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `RcvbufErrors` of /proc/net/snmp: UDP datagrams dropped because a socket's receive buffer
/// was full (per network namespace).
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The `drops` of the UDP socket bound to 127.0.0.1:`port` (/proc/net/udp).
fn udp_socket_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(1) == Some(&local.as_str())).then(|| cols.last()?.parse().ok())?
    })
}

fn check_selftest(c: &mut Checks, r: Option<&Value>) {
    let Some(r) = r else {
        return c.0.push("no selftest report".into());
    };
    let want: Vec<(String, String)> = pin_cases()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_string(),
                x["expect"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let got = r["cases"].as_array().cloned().unwrap_or_default();
    c.eq("pin self-test case count", got.len(), want.len());
    for (g, (name, expect)) in got.iter().zip(&want) {
        c.eq(
            &format!(
                "pin self-test {name:?} (page says: {})",
                g["message"].as_str().unwrap_or("")
            ),
            g["outcome"].as_str().unwrap_or(""),
            expect.as_str(),
        );
    }
}

fn step_ok(c: &mut Checks, r: &Value, name: &str) -> bool {
    let step = r["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["name"] == name));
    match step {
        Some(s) if s["ok"] == true => true,
        Some(s) => {
            c.0.push(format!(
                "main/{name}: {}: {}",
                s["name"].as_str().unwrap_or(""),
                s["message"].as_str().unwrap_or("?")
            ));
            false
        }
        None => {
            c.0.push(format!("main/{name}: not run"));
            false
        }
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

#[allow(clippy::too_many_arguments)]
fn check_main(
    c: &mut Checks,
    browser: Browser,
    r: Option<&Value>,
    ma: &MaStandin,
    front: &MaFront,
    sendspin: &SendspinStandin,
    gw_events: &[Value],
) -> String {
    let mut bench = String::new();
    let Some(r) = r else {
        c.0.push("no main report".into());
        return bench;
    };
    if r["ok"] != true {
        c.0.push(format!("main phase threw: {}", r["error"]));
        return bench;
    }
    let t = &r["timings"];
    if step_ok(c, r, "connect") {
        c.eq(
            "server_info, byte for byte",
            r["server_info"].as_str().unwrap_or(""),
            ma_standin::server_info().to_string().as_str(),
        );
        c.check(r["pin_checked"] == true, || {
            "the page did not pin-check the answer".into()
        });
        let sid = r["session_id"].as_str().unwrap_or("").to_string();
        c.check(sid.len() == 16, || format!("session id {sid:?}"));
        c.eq(
            "iceServers given to the page",
            r["ice_servers"].clone(),
            json!([]),
        );
        let want = Seen::Connected(format!("/ws?webrtc_session_id={sid}"));
        c.check(ma.seen().contains(&want), || {
            format!("the stand-in never saw {want:?}")
        });
        bench += &format!(
            "  connect-request -> server_info {:.1} ms (connected {:.1}, offer sent {:.1}, answer {:.1}, ICE+DTLS up {:.1}, ma-api open {:.1}); pair {}\n",
            f(&t["connect_request_to_server_info"]),
            f(&t["connect_request_to_connected"]),
            f(&t["connect_request_to_offer"]),
            f(&t["connect_request_to_answer"]),
            f(&t["connect_request_to_peer_connected"]),
            f(&t["connect_request_to_channel_open"]),
            r["describe"]["pair"],
        );
    } else {
        println!("page connection details: {}", r["describe"]);
        return bench;
    }

    if step_ok(c, r, "echo") {
        let texts = echo_texts();
        let got = r["echo"].as_array().cloned().unwrap_or_default();
        c.eq("echo count", got.len(), texts.len());
        for (g, t) in got.iter().zip(&texts) {
            c.eq(
                &format!("echo of {} bytes: length", t.len()),
                g["len"].as_u64(),
                Some(t.len() as u64),
            );
            c.eq(
                &format!("echo of {} bytes: sha-256", t.len()),
                g["sha256"].as_str().unwrap_or(""),
                sha256_hex(t.as_bytes()).as_str(),
            );
        }
    }
    if step_ok(c, r, "down") {
        let got = r["down"].as_array().cloned().unwrap_or_default();
        c.eq("down count", got.len(), DOWN_SIZES.len());
        for (g, size) in got.iter().zip(DOWN_SIZES) {
            let want = ma_standin::sized_json(size, &json!(format!("down-{size}")));
            c.eq(
                &format!("MA -> page {size} bytes: length"),
                g["len"].as_u64(),
                Some(size as u64),
            );
            c.eq(
                &format!("MA -> page {size} bytes: sha-256"),
                g["sha256"].as_str().unwrap_or(""),
                sha256_hex(want.as_bytes()).as_str(),
            );
            if size > browser.max_message_size().min(256 * 1024) {
                c.check(g["chunk_frames"].as_u64().unwrap_or(0) > 1, || {
                    format!("MA -> page {size} bytes came without __chunk__ frames: {g}")
                });
            }
        }
    }
    if step_ok(c, r, "rtt") {
        let mut s: Vec<f64> = r["rtt_ms"].as_array().unwrap().iter().map(f).collect();
        s.sort_by(|a, b| a.total_cmp(b));
        bench += &format!(
            "  echo round trip page -> gateway -> stand-in -> page: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} round trips)\n",
            percentile(&s, 0.50),
            percentile(&s, 0.99),
            s.last().copied().unwrap_or(f64::NAN),
            s.len()
        );
    }
    if step_ok(c, r, "big") {
        let mut line = String::from("  large replies, one at a time (ms):");
        for (key, what) in [
            ("api_1mb", "ma-api 1 MB"),
            ("api_3mb", "ma-api 3 MB"),
            ("image_3mb", "http_proxy 3 MB image"),
        ] {
            let mut v: Vec<f64> = r["big"][key]
                .as_array()
                .map(|a| a.iter().map(f).collect())
                .unwrap_or_default();
            c.eq(&format!("{what} repetitions"), v.len(), big_repeats());
            v.sort_by(|a, b| a.total_cmp(b));
            line += &format!(
                " {what} p50 {:.0}, p95 {:.0}, max {:.0};",
                percentile(&v, 0.50),
                percentile(&v, 0.95),
                v.last().copied().unwrap_or(f64::NAN)
            );
        }
        bench += &line;
        bench += &format!(" ({} repetitions each)\n", big_repeats());
    }
    if step_ok(c, r, "http_proxy") {
        check_http(
            c,
            browser,
            r["http"].as_array().cloned().unwrap_or_default(),
            front,
        );
        // Requests on http_proxy are for the gateway, never for MA's API socket.
        c.check(
            !ma.seen()
                .iter()
                .any(|s| matches!(s, Seen::Text(t) if t.contains("http-proxy-request"))),
            || "an http-proxy-request reached MA's API socket".into(),
        );
    }
    if step_ok(c, r, "http_api") {
        let a = &r["http_api"];
        let png = MaFront::image();
        c.eq(
            "ma-api http-proxy-response keys",
            a["keys"].clone(),
            json!(["type", "id", "status", "headers", "body"]),
        );
        c.eq(
            "ma-api http-proxy-response compact prefix",
            a["prefix"].as_str(),
            Some(r#"{"type":"http-proxy-response","id":"api_1","status":200,"headers":{"#),
        );
        c.check(a["lower_hex"] == true, || {
            "ma-api body hex is not lower-case".into()
        });
        c.eq(
            "ma-api image size",
            a["size"].as_u64(),
            Some(png.len() as u64),
        );
        c.eq(
            "ma-api image sha-256",
            a["sha256"].as_str().unwrap_or(""),
            sha256_hex(&png).as_str(),
        );
        // 2 hex digits per byte: above any peer's limit, so it must come as __chunk__ frames.
        c.check(a["chunk_frames"].as_u64().unwrap_or(0) > 1, || {
            format!(
                "ma-api image came without __chunk__ frames: {}",
                a["chunk_frames"]
            )
        });
    }
    if step_ok(c, r, "sendspin") {
        let s = &r["sendspin"];
        let auth = json!({"type": "auth", "token": "t0k3n", "client_id": format!("browser-{}", browser.name())}).to_string();
        c.eq(
            "sendspin auth echo",
            s["auth_echo"].as_str().unwrap_or(""),
            auth.as_str(),
        );
        let got = s["binary"].as_array().cloned().unwrap_or_default();
        c.eq("sendspin binary count", got.len(), SENDSPIN_SIZES.len());
        for (k, (g, size)) in got.iter().zip(SENDSPIN_SIZES).enumerate() {
            c.eq(
                &format!("sendspin binary {size} bytes: length"),
                g["len"].as_u64(),
                Some(size as u64),
            );
            c.eq(
                &format!("sendspin binary {size} bytes: sha-256"),
                g["sha256"].as_str().unwrap_or(""),
                sha256_hex(&pattern(size, k)).as_str(),
            );
        }
        c.check(
            sendspin
                .connections
                .lock()
                .unwrap()
                .iter()
                .any(|p| p == "/sendspin"),
            || {
                format!(
                    "the Sendspin stand-in saw connections {:?}",
                    sendspin.connections.lock().unwrap()
                )
            },
        );
        c.check(
            sendspin.texts.lock().unwrap().first() == Some(&auth),
            || {
                format!(
                    "the Sendspin stand-in's first text: {:?}",
                    sendspin.texts.lock().unwrap().first()
                )
            },
        );
        let want_event = format!("browser-{}", browser.name());
        let seen_event = gw_events
            .iter()
            .any(|v| v["event"] == "sendspin_player" && v["client_id"] == want_event.as_str());
        c.check(seen_event, || {
            format!(
                "no sendspin_player event for {want_event} on the gateway's stdout: {gw_events:?}"
            )
        });
        let b = &r["bench"];
        let mib = BENCH_BYTES as f64 / (1024.0 * 1024.0);
        c.eq(
            "bench upload acknowledgement",
            b["upload_ack"].as_str().unwrap_or(""),
            json!({"sunk": BENCH_BYTES}).to_string().as_str(),
        );
        bench += &format!(
            "  throughput page <-> gateway <-> stand-in (sendspin, {} KiB binary messages): upload {:.1} MiB/s ({mib:.0} MiB in {:.0} ms), download {:.1} MiB/s ({:.0} ms)\n",
            BENCH_FRAME / 1024,
            mib / (f(&b["upload_ms"]) / 1000.0),
            f(&b["upload_ms"]),
            mib / (f(&b["download_ms"]) / 1000.0),
            f(&b["download_ms"]),
        );
    } else if r["bench"]["upload_ms"].is_number() {
        bench += &format!(
            "  upload took {} ms before the sendspin step failed\n",
            r["bench"]["upload_ms"]
        );
    }
    if step_ok(c, r, "ma_close") {
        let m = &r["ma_close"];
        c.check(m["api_closed"] == true, || {
            format!("MA closed its socket; the page's ma-api channel did not close: {m}")
        });
        bench += &format!(
            "  MA closes its socket -> page sees the channel close: {:.1} ms ({})\n",
            f(&m["ms"]),
            m["reason"].as_str().unwrap_or("")
        );
    }
    bench
}

fn check_http(c: &mut Checks, browser: Browser, got: Vec<Value>, front: &MaFront) {
    let by_path = |p: &str, i: usize| -> Value {
        got.get(i)
            .filter(|g| g["path"] == p)
            .cloned()
            .unwrap_or_else(|| json!({"missing": p}))
    };
    let png = MaFront::image();
    let (w, h) = MaFront::image_size();

    // 0: the image, byte for byte, in binary frames within the browser's limit.
    let img = by_path(IMAGE_PATH, 0);
    if img.get("error").is_some() || img.get("missing").is_some() {
        c.0.push(format!("http_proxy GET image: {img}"));
    } else {
        c.eq("http_proxy image status", img["status"].as_u64(), Some(200));
        c.eq(
            "http_proxy image size",
            img["size"].as_u64(),
            Some(png.len() as u64),
        );
        c.eq(
            "http_proxy image sha-256",
            img["sha256"].as_str().unwrap_or(""),
            sha256_hex(&png).as_str(),
        );
        c.eq(
            "http_proxy image decoded by the browser",
            img["image"].clone(),
            json!({"width": w, "height": h}),
        );
        c.eq(
            "http_proxy header keys",
            img["header_keys"].clone(),
            json!(["type", "id", "status", "headers", "size"]),
        );
        let headers = img["headers"].as_object().cloned().unwrap_or_default();
        c.eq(
            "http_proxy image Content-Type",
            headers.get("Content-Type").and_then(Value::as_str),
            Some("image/png"),
        );
        for bad in ["Set-Cookie", "X-Standin-Internal", "Connection"] {
            c.check(!headers.keys().any(|k| k.eq_ignore_ascii_case(bad)), || {
                format!("response header {bad} passed back: {headers:?}")
            });
        }
        let frames: Vec<u64> = img["frames"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        c.check(
            frames
                .iter()
                .all(|&n| n as usize <= browser.max_message_size() && n > 0),
            || format!("http_proxy frames {frames:?} above the browser's limit"),
        );
    }
    // What reached MA: the path as sent, harmless headers only, our Host.
    let seen = front.http_seen();
    match seen.iter().find(|s| s.target == IMAGE_PATH) {
        None => c.0.push(format!(
            "the stand-in never got GET {IMAGE_PATH}; it got {seen:?}"
        )),
        Some(s) => {
            c.eq("method at MA", s.method.as_str(), "GET");
            c.eq(
                "Accept at MA",
                s.header("accept"),
                Some("image/avif,image/webp,image/png,*/*"),
            );
            c.eq(
                "Host at MA",
                s.header("host"),
                Some(format!("127.0.0.1:{}", front.port).as_str()),
            );
            for bad in ["cookie", "x-forwarded-for"] {
                c.check(s.header(bad).is_none(), || {
                    format!("request header {bad} forwarded to MA: {s:?}")
                });
            }
        }
    }
    // 1: HEAD: no body, MA's length.
    let head = by_path("/imageproxy?path=head", 1);
    c.eq("http_proxy HEAD status", head["status"].as_u64(), Some(200));
    c.eq("http_proxy HEAD size", head["size"].as_u64(), Some(0));
    c.eq(
        "http_proxy HEAD Content-Length",
        head["headers"]["Content-Length"].as_str(),
        Some(png.len().to_string().as_str()),
    );
    // 2: MA's 404 passes through.
    let missing = by_path("/missing.png", 2);
    c.eq(
        "http_proxy 404 status",
        missing["status"].as_u64(),
        Some(404),
    );
    c.eq(
        "http_proxy 404 body",
        missing["text"].as_str(),
        Some("not found"),
    );
    // 3, 4: refused by the gateway, nothing fetched.
    let evil = by_path("//evil.example/x", 3);
    c.eq(
        "http_proxy //evil.example/x status",
        evil["status"].as_u64(),
        Some(400),
    );
    let post = by_path("/imageproxy?path=post", 4);
    c.eq("http_proxy POST status", post["status"].as_u64(), Some(400));
    for s in &seen {
        c.check(
            s.target != "//evil.example/x" && s.target != "/imageproxy?path=post",
            || format!("the gateway fetched a refused request: {s:?}"),
        );
    }
}

fn check_pin(c: &mut Checks, r: Option<&Value>, fake_ma: &MaStandin) {
    let Some(r) = r else {
        return c.0.push("no pin report".into());
    };
    c.check(r["refused"] == true, || {
        format!("the page accepted a gateway whose certificate is not the Remote ID's: {r}")
    });
    c.eq(
        "pin refusal error",
        r["error"]["name"].as_str(),
        Some("PinError"),
    );
    c.check(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("does not match Remote ID"),
        || format!("pin refusal message: {}", r["error"]),
    );
    c.check(r["got_answer"] == true, || {
        format!("the pin phase never got an answer: {r}")
    });
    c.check(
        r["remote_description_applied"] == false && r["api_opened"] == false,
        || format!("the refused answer was used: {r}"),
    );
    c.check(fake_ma.seen().is_empty(), || {
        format!("MA behind the wrong gateway saw {:?}", fake_ma.seen())
    });
}

fn check_restart(c: &mut Checks, r: Option<&Value>, restart: Option<Duration>) -> String {
    let Some(r) = r else {
        c.0.push("no restart report".into());
        return String::new();
    };
    if r["ok"] != true {
        c.0.push(format!(
            "restart phase: {} (gateway restarted: {restart:?})",
            r["error"]
        ));
        return String::new();
    }
    let info = ma_standin::server_info().to_string();
    c.eq(
        "server_info before the restart",
        r["first_server_info"].as_str(),
        Some(info.as_str()),
    );
    c.eq(
        "server_info after the restart",
        r["server_info"].as_str(),
        Some(info.as_str()),
    );
    c.check(r["echo_same"] == true, || {
        "echo after the restart differs".into()
    });
    c.check(r["session"] != r["first_session"], || {
        "the same session id after the restart".into()
    });
    format!(
        "  gateway restart: page saw the loss after {:.0} ms ({}), back at server_info {:.0} ms later ({} failed attempts; the restart itself took {:.0} ms)\n",
        f(&r["lost_after_ms"]),
        r["lost_reason"].as_str().unwrap_or(""),
        f(&r["reconnect_ms"]),
        r["attempts"].as_array().map_or(0, Vec::len),
        restart.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
    )
}
