//! The NAT lab: network namespaces for a home network (the gateway behind a NAT router), a
//! mobile network (the client behind a NAT router) and an "internet" between them carrying
//! the signaling server and a TURN server (coturn). Documentation ranges only:
//!
//! ```text
//!  gw 192.0.2.10 ─ 192.0.2.1 [home NAT] 203.0.113.2 ─┐
//!                                                      ├─ br0 203.0.113.1 (signal, coturn)
//!  cl 198.51.100.10 ─ 198.51.100.1 [mobile NAT] 203.0.113.3 ─┘
//! ```
//!
//! NATs are nft masquerade on the router's `wan0`: port-preserving (endpoint-independent
//! mapping, the "easy" NAT) or `fully-random` (a new random port per destination: the
//! symmetric NAT). Both routers drop unsolicited packets addressed to themselves, as home
//! routers do (and so no conntrack entry of such a packet takes a port a later mapping
//! wants). Code runs inside a namespace through [`Lab::run_in`]: a thread that joins the
//! namespace with `setns`, so sockets it opens and processes it starts live there.
//!
//! [`Lab::add_ipv6`] adds IPv6 (2001:db8::/32, routed, no NAT) to the same namespaces:
//!
//! ```text
//!  gw 2001:db8:10::10 ─ [home] 2001:db8:1::2 ─┐
//!                                              ├─ br0 2001:db8:1::1 (signal)
//!  cl 2001:db8:20::10 ─ [mobile] 2001:db8:1::3 ─┘
//! ```
//!
//! and may leave the mobile network IPv6-only (no IPv4 address left in `cl`), behind a
//! stateful firewall at the mobile router that lets in only replies.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const SERVER_IP: &str = "203.0.113.1";
pub const GATEWAY_IP: &str = "192.0.2.10";
pub const CLIENT_IP: &str = "198.51.100.10";
pub const SERVER_IP6: &str = "2001:db8:1::1";
pub const GATEWAY_IP6: &str = "2001:db8:10::10";
pub const CLIENT_IP6: &str = "2001:db8:20::10";
pub const TURN_USER: &str = "lab";
pub const TURN_PASS: &str = "lab-secret";

/// How a router maps its inside addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// One public port per inside socket, whatever the destination.
    Easy,
    /// A new random public port per destination.
    Symmetric,
}

/// The namespaces of one lab, deleted when dropped.
pub struct Lab {
    pub inet: String,
    pub home: String,
    pub gw: String,
    pub mobile: String,
    pub cl: String,
}

/// Why the lab cannot run here, if it cannot (probed once per test binary).
pub fn unavailable() -> Option<String> {
    static PROBED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "nft", "turnserver", "iptables"] {
        if find(tool).is_none() {
            return Some(format!(
                "`{tool}` is not installed (apt-get install iproute2 nftables coturn iptables)"
            ));
        }
    }
    let probe = format!("malabprobe{}", std::process::id());
    if !run_ok(&["ip", "netns", "add", &probe]) {
        return Some("`ip netns add` failed".into());
    }
    run_ok(&["ip", "netns", "del", &probe]);
    None
}

/// The lab cannot run: say so loudly, and fail under CI, where it must run.
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var_os("CI").is_some_and(|v| v != "0" && !v.is_empty()) {
        panic!("{test}: the NAT lab cannot run: {why} (CI is set, so this fails)");
    }
    eprintln!("SKIPPED {test}: the NAT lab cannot run: {why}");
}

fn find(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn run_ok(args: &[&str]) -> bool {
    let Some(exe) = find(args[0]) else {
        return false;
    };
    Command::new(exe)
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run a command, panicking with its stderr if it fails.
pub fn sh(args: &[&str]) {
    let exe = find(args[0]).unwrap_or_else(|| panic!("{} not found", args[0]));
    let out = Command::new(exe)
        .args(&args[1..])
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a command inside `ns` with `input` on its standard input.
pub fn sh_in_with_input(ns: &str, args: &[&str], input: &str) {
    let mut child = Command::new(find("ip").unwrap())
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run a command in a namespace");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} in {ns} failed: {}\n{input}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Build the five namespaces, their links, addresses, routes and the two NATs.
    pub fn new(home_nat: Nat, mobile_nat: Nat) -> Lab {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let name = |role: &str| format!("malab-{tag}-{role}");
        let lab = Lab {
            inet: name("inet"),
            home: name("home"),
            gw: name("gw"),
            mobile: name("mobile"),
            cl: name("cl"),
        };
        for ns in lab.all() {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&[
            "ip", "-n", &lab.inet, "link", "add", "br0", "type", "bridge",
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.inet,
            "addr",
            "add",
            "203.0.113.1/24",
            "dev",
            "br0",
        ]);
        sh(&["ip", "-n", &lab.inet, "link", "set", "br0", "up"]);
        // (namespace A, name in A, namespace B, name in B)
        let links = [
            (&lab.home, "wan0", &lab.inet, "hw0"),
            (&lab.mobile, "wan0", &lab.inet, "mw0"),
            (&lab.gw, "eth0", &lab.home, "lan0"),
            (&lab.cl, "eth0", &lab.mobile, "lan0"),
        ];
        for (i, (a, an, b, bn)) in links.iter().enumerate() {
            let (ta, tb) = (format!("mlv{tag}a{i}"), format!("mlv{tag}b{i}"));
            // Interface names are at most 15 bytes: short temporary names, renamed inside.
            let (ta, tb) = (last15(&ta), last15(&tb));
            sh(&[
                "ip", "link", "add", &ta, "type", "veth", "peer", "name", &tb,
            ]);
            sh(&["ip", "link", "set", &ta, "netns", a]);
            sh(&["ip", "link", "set", &tb, "netns", b]);
            sh(&["ip", "-n", a, "link", "set", &ta, "name", an]);
            sh(&["ip", "-n", b, "link", "set", &tb, "name", bn]);
            sh(&["ip", "-n", a, "link", "set", an, "up"]);
            sh(&["ip", "-n", b, "link", "set", bn, "up"]);
        }
        sh(&["ip", "-n", &lab.inet, "link", "set", "hw0", "master", "br0"]);
        sh(&["ip", "-n", &lab.inet, "link", "set", "mw0", "master", "br0"]);
        let addr = |ns: &str, cidr: &str, dev: &str| {
            sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
        };
        addr(&lab.home, "203.0.113.2/24", "wan0");
        addr(&lab.home, "192.0.2.1/24", "lan0");
        addr(&lab.mobile, "203.0.113.3/24", "wan0");
        addr(&lab.mobile, "198.51.100.1/24", "lan0");
        addr(&lab.gw, "192.0.2.10/24", "eth0");
        addr(&lab.cl, "198.51.100.10/24", "eth0");
        // The rest of the Internet: a next hop nobody answers for, so packets towards the
        // other side's private addresses vanish there (as on the real Internet) instead of
        // failing at once (coturn ends an allocation whose relay socket gets ENETUNREACH).
        for ns in [&lab.inet, &lab.home, &lab.mobile] {
            sh(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                "203.0.113.254",
            ]);
        }
        sh(&[
            "ip",
            "-n",
            &lab.gw,
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.cl,
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
        ]);
        lab.router(&lab.home, home_nat);
        lab.router(&lab.mobile, mobile_nat);
        lab
    }

    /// Give every namespace IPv6 addresses and routes (see the module's picture); with
    /// `mobile_v6_only`, take the client's IPv4 address and route away and let only replies in
    /// through the mobile router (a stateful IPv6 firewall, as mobile networks have).
    /// Addresses are added with `nodad`: duplicate address detection would leave them
    /// tentative for a while, and the gateway does not offer tentative addresses.
    pub fn add_ipv6(&self, mobile_v6_only: bool) {
        let addr = |ns: &str, cidr: &str, dev: &str| {
            sh(&[
                "ip", "-n", ns, "-6", "addr", "add", cidr, "dev", dev, "nodad",
            ])
        };
        let route = |ns: &str, to: &str, via: &str| {
            sh(&["ip", "-n", ns, "-6", "route", "add", to, "via", via])
        };
        addr(&self.inet, "2001:db8:1::1/64", "br0");
        addr(&self.home, "2001:db8:1::2/64", "wan0");
        addr(&self.home, "2001:db8:10::1/64", "lan0");
        addr(&self.mobile, "2001:db8:1::3/64", "wan0");
        addr(&self.mobile, "2001:db8:20::1/64", "lan0");
        addr(&self.gw, "2001:db8:10::10/64", "eth0");
        addr(&self.cl, "2001:db8:20::10/64", "eth0");
        // The two routers share the internet's link: each reaches the other's network
        // directly, and the internet reaches both.
        route(&self.inet, "2001:db8:10::/64", "2001:db8:1::2");
        route(&self.inet, "2001:db8:20::/64", "2001:db8:1::3");
        route(&self.home, "2001:db8:20::/64", "2001:db8:1::3");
        route(&self.mobile, "2001:db8:10::/64", "2001:db8:1::2");
        route(&self.gw, "default", "2001:db8:10::1");
        route(&self.cl, "default", "2001:db8:20::1");
        for ns in [&self.home, &self.mobile] {
            sh_in_with_input(
                ns,
                &["sh", "-c", "cat > /proc/sys/net/ipv6/conf/all/forwarding"],
                "1\n",
            );
        }
        self.wait_for_link_local_addresses();
        if mobile_v6_only {
            sh(&["ip", "-n", &self.cl, "-4", "addr", "flush", "dev", "eth0"]);
            self.nft(
                &self.mobile,
                "table ip6 firewall {
                    chain forward { type filter hook forward priority 0; policy accept;
                        iifname \"wan0\" ct state established,related accept;
                        iifname \"wan0\" drop; }
                 }\n",
            );
        }
    }

    /// Wait until no address is tentative any more: the kernel gives each link a link-local
    /// address on its own, with duplicate address detection, and neighbour discovery does not
    /// answer for the link until it is done (a first TCP connection would wait for a SYN
    /// retransmission, a second or more).
    fn wait_for_link_local_addresses(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for ns in self.all() {
            loop {
                let out = Command::new(find("ip").unwrap())
                    .args(["-n", ns, "-6", "addr", "show", "tentative"])
                    .output()
                    .expect("run ip");
                if out.status.success() && out.stdout.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "addresses still tentative in {ns}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn all(&self) -> [&String; 5] {
        [&self.inet, &self.home, &self.gw, &self.mobile, &self.cl]
    }

    fn router(&self, ns: &str, nat: Nat) {
        sh_in_with_input(
            ns,
            &["sh", "-c", "cat > /proc/sys/net/ipv4/ip_forward"],
            "1\n",
        );
        let masquerade = match nat {
            Nat::Easy => "masquerade",
            Nat::Symmetric => "masquerade fully-random",
        };
        let rules = format!(
            "table ip nat {{
                chain post {{ type nat hook postrouting priority 100; oifname \"wan0\" {masquerade}; }}
             }}
             table ip filter {{
                chain input {{ type filter hook input priority 0; policy accept;
                    iifname \"wan0\" ct state new drop; }}
             }}\n"
        );
        sh_in_with_input(ns, &["nft", "-f", "-"], &rules);
    }

    /// Add nft rules (a whole `nft -f` script) in a namespace.
    pub fn nft(&self, ns: &str, script: &str) {
        sh_in_with_input(ns, &["nft", "-f", "-"], script);
    }

    /// Run `f` on a thread inside namespace `ns` (sockets and child processes it makes live
    /// there) and return its result.
    pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Start a thread inside `ns` that runs `f` in the background.
    pub fn spawn_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

fn last15(s: &str) -> String {
    s[s.len().saturating_sub(15)..].to_string()
}

/// Move the calling thread into the network namespace mounted at `path`.
fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid namespace file descriptor changes only this thread's network
    // namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.all() {
            run_ok(&["ip", "netns", "del", ns]);
        }
    }
}

/// A coturn in the lab's internet, killed when dropped. Long-term credentials
/// [`TURN_USER`]/[`TURN_PASS`], UDP and TCP on 3478, TLS on 5349 with `cert`/`key`.
pub struct Coturn {
    child: Child,
    pub log: PathBuf,
}

impl Coturn {
    pub fn start(lab: &Lab, dir: &Path, cert: &Path, key: &Path) -> Coturn {
        let log = dir.join("turnserver.log");
        let args: Vec<String> = [
            "-n",
            "--listening-ip",
            SERVER_IP,
            "--relay-ip",
            SERVER_IP,
            "--external-ip",
            SERVER_IP,
            "--listening-port",
            "3478",
            "--tls-listening-port",
            "5349",
            "--lt-cred-mech",
            "--realm",
            "lab.example",
            "--min-port",
            "49152",
            "--max-port",
            "49407",
            "--no-cli",
            "--no-dtls",
            "--no-multicast-peers",
            "--simple-log",
            "--verbose",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("--user={TURN_USER}:{TURN_PASS}"),
            format!("--cert={}", cert.display()),
            format!("--pkey={}", key.display()),
            format!("--log-file={}", log.display()),
            format!("--pidfile={}", dir.join("turnserver.pid").display()),
            // Its own database: parallel cases do not share the system one.
            format!("--userdb={}", dir.join("turndb").display()),
        ])
        .collect();
        let exe = find("turnserver").expect("turnserver");
        let child = Lab::run_in(&lab.inet, move || {
            Command::new(exe)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start turnserver")
        });
        let turn = Coturn { child, log };
        // Ready once it listens: a Binding request over UDP is answered.
        let ready = Lab::run_in(&lab.inet, || {
            let s = std::net::UdpSocket::bind("203.0.113.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let req = ma_webrtc_gateway::webrtc::stun_gather::binding_request(&[7; 12]);
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                let _ = s.send_to(&req, "203.0.113.1:3478");
                if s.recv_from(&mut buf).is_ok() {
                    return true;
                }
            }
            false
        });
        assert!(ready, "coturn did not answer: {}", turn.log_tail());
        turn
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for `ip`, as PEM files in `dir`: (ca, cert, key).
pub fn lab_certificates(dir: &Path, ip: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "NAT lab CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress(ip.parse().unwrap())];
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

/// The lab's TURN server as an ICE server list entry.
pub fn turn_entry(url: &str) -> serde_json::Value {
    serde_json::json!({"urls": url, "username": TURN_USER, "credential": TURN_PASS})
}

/// The STUN address of the lab's server.
pub fn stun_addr() -> SocketAddr {
    format!("{SERVER_IP}:3478").parse().unwrap()
}
