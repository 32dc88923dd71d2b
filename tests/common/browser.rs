//! Real browsers for the tests: finding Chromium or Firefox, launching one headless on a page,
//! and the page's HTTP server (`tests/browser/`: the page, its config, its reports and logs).
//! Used by tests/browsers.rs and the NAT lab's browser case.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Browser {
    Chromium,
    Firefox,
}

impl Browser {
    pub fn name(self) -> &'static str {
        match self {
            Browser::Chromium => "chromium",
            Browser::Firefox => "firefox",
        }
    }

    pub fn executables(self) -> &'static [&'static str] {
        match self {
            Browser::Chromium => &["chromium", "chromium-browser"],
            Browser::Firefox => &["firefox-esr", "firefox"],
        }
    }

    /// The largest message the browser accepts (what the gateway may send it).
    pub fn max_message_size(self) -> usize {
        match self {
            Browser::Chromium => 262_144,
            Browser::Firefox => 1_073_741_823,
        }
    }

    pub fn find(self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        for name in self.executables() {
            for dir in std::env::split_paths(&path) {
                let p = dir.join(name);
                if p.is_file() {
                    return Some(p);
                }
            }
        }
        None
    }
}

/// A browser process group, killed when dropped.
pub struct BrowserProc {
    child: Child,
    log_file: PathBuf,
}

impl BrowserProc {
    pub fn launch(browser: Browser, exe: &Path, url: &str, dir: &Path) -> BrowserProc {
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        let log_file = dir.join("browser.log");
        let log = std::fs::File::create(&log_file).unwrap();
        let mut cmd = Command::new(exe);
        match browser {
            Browser::Chromium => {
                cmd.args([
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-extensions",
                    "--disable-domain-reliability",
                    "--metrics-recording-only",
                    "--allow-loopback-in-peer-connection",
                    "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(url);
            }
            Browser::Firefox => {
                let prefs = std::fs::read_to_string(browser_dir().join("firefox-user.js")).unwrap();
                std::fs::write(profile.join("user.js"), prefs).unwrap();
                cmd.args(["--headless", "--no-remote", "--profile"])
                    .arg(&profile)
                    .arg(url)
                    .env("MOZ_CRASHREPORTER_DISABLE", "1")
                    .env("MOZ_DISABLE_AUTO_SAFE_MODE", "1");
            }
        }
        cmd.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().expect("start the browser");
        BrowserProc { child, log_file }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for BrowserProc {
    fn drop(&mut self) {
        // The whole group: renderers, GPU and network processes, content processes.
        let _ = super::send_signal(-(self.child.id() as i32), libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

// ---- the page's HTTP server -----------------------------------------------------------------

/// Serves the page and its config, receives its reports; one thread per connection
/// (Chromium opens speculative connections it may never use).
pub struct PageServer {
    pub port: u16,
    pub reports: Receiver<Value>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl PageServer {
    pub fn start(config: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, reports) = mpsc::channel();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let config = Arc::new(config);
        let logs2 = logs.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (tx, logs, config) = (tx.clone(), logs2.clone(), config.clone());
                std::thread::spawn(move || serve_page(stream, &tx, &logs, &config));
            }
        });
        PageServer {
            port,
            reports,
            logs,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/index.html", self.port)
    }
}

fn serve_page(mut stream: TcpStream, tx: &Sender<Value>, logs: &Mutex<Vec<String>>, config: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // One request (head and Content-Length body), then the next on the same connection.
        let head_len = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(
            req.parse(&buf[..head_len]),
            Ok(httparse::Status::Complete(_))
        ) {
            return;
        }
        let method = req.method.unwrap_or("").to_string();
        let path = req.path.unwrap_or("").to_string();
        let length = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        while buf.len() < head_len + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_len..head_len + length].to_vec();
        buf.drain(..head_len + length);

        let file = |name: &str| std::fs::read(browser_dir().join(name)).ok();
        let (status, ctype, content): (&str, &str, Vec<u8>) = match (method.as_str(), path.as_str())
        {
            ("GET", "/" | "/index.html") => (
                "200 OK",
                "text/html; charset=utf-8",
                file("index.html").unwrap(),
            ),
            ("GET", "/remote.js") => ("200 OK", "text/javascript", file("remote.js").unwrap()),
            ("GET", "/harness.js") => ("200 OK", "text/javascript", file("harness.js").unwrap()),
            ("GET", "/config.json") => ("200 OK", "application/json", config.as_bytes().to_vec()),
            ("POST", "/log") => {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    logs.lock()
                        .unwrap()
                        .push(v["line"].as_str().unwrap_or("").to_string());
                }
                ("204 No Content", "text/plain", Vec::new())
            }
            ("POST", "/report") => {
                let v = serde_json::from_slice::<Value>(&body).unwrap_or_else(
                    |e| json!({"phase": "fatal", "error": format!("bad report: {e}")}),
                );
                let _ = tx.send(v);
                ("204 No Content", "text/plain", Vec::new())
            }
            _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
        };
        // Cross-origin isolated (COOP + COEP): performance.now() gets its finest resolution.
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Embedder-Policy: require-corp\r\n\r\n",
            content.len()
        );
        if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&content).is_err() {
            return;
        }
    }
}
