//! Helpers shared by the integration tests: child processes that die with the test, their
//! stderr as a stream of lines, fresh temporary folders.
#![allow(dead_code)]

pub mod ma_standin;
pub mod stack;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ma-webrtc-gateway");

/// A fresh, empty folder under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ma-gw-test-{name}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running child process, killed when dropped; its stderr lines arrive on `lines`.
pub struct Proc {
    pub child: Child,
    pub lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    /// Start the gateway binary with `args` and `envs` (nothing inherited from MA_* variables).
    pub fn start(args: &[&str], envs: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("MA_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "debug");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway binary");
        // Logs (stderr) and events (stdout, prefixed "stdout: ") arrive on one channel.
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || forward(BufReader::new(stderr), "", tx));
        std::thread::spawn(move || forward(BufReader::new(stdout), "stdout: ", tx2));
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait until a stderr line contains `needle`; returns it. Panics with the log on timeout.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {timeout:?}; log so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Send SIGTERM and wait for the exit; returns the exit code and how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let t0 = Instant::now();
        unsafe_kill(self.child.id(), 15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), t0.elapsed());
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn forward(reader: impl BufRead, prefix: &str, tx: mpsc::Sender<String>) {
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if tx.send(format!("{prefix}{line}")).is_err() {
            break;
        }
    }
}

/// Send a signal with the `kill` command (no libc dependency in tests).
fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
