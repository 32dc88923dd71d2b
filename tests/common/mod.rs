//! Helpers shared by the integration tests: child processes that die with the test, their
//! events (stdout, JSON lines) and logs (stderr), fresh temporary folders.
#![allow(dead_code)]

pub mod browser;
pub mod fake_signaling;
pub mod ma_standin;
pub mod netlab;
pub mod stack;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_ma-webrtc-gateway");

/// The binary the tests run: [`BIN`], or `TEST_GATEWAY_BIN` when set (a release build under
/// the debug tests, e.g. the browser benchmark's large replies without building the tests
/// with fat LTO).
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("TEST_GATEWAY_BIN").unwrap_or_else(|| BIN.into())
}

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

/// A running child process, killed when dropped. Its stderr (logs, for diagnostics) and its
/// stdout (the gateway's events: one JSON object per line) are read by two threads.
pub struct Proc {
    pub child: Child,
    logs: Receiver<String>,
    stdout: Receiver<String>,
    /// Its log lines read so far.
    seen: Vec<String>,
    /// Its events read so far, in order.
    events: Vec<Value>,
    /// `events[..waited]` are behind the last event `wait_for_event` returned.
    waited: usize,
}

impl Proc {
    /// Start the gateway binary with `args` and `envs` (nothing inherited from MA_* variables).
    pub fn start(args: &[&str], envs: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(bin());
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
        let err_pipe = child.stderr.take().unwrap();
        let out_pipe = child.stdout.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || forward(BufReader::new(err_pipe), tx));
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || forward(BufReader::new(out_pipe), tx));
        Proc {
            child,
            logs,
            stdout,
            seen: Vec::new(),
            events: Vec::new(),
            waited: 0,
        }
    }

    /// Wait until a log line contains `needle`; returns it. Panics with the log on timeout.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => self.fail(&format!("no log line with {needle:?}"), timeout, e),
            }
        }
    }

    /// Wait for the next event (stdout line) whose `"event"` is `name`, after the one this
    /// returned last; returns the whole event. Panics with the log and the events on timeout,
    /// and on a stdout line that is not a JSON object with an `"event"` string.
    pub fn wait_for_event(&mut self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(k) = self.events[self.waited..]
                .iter()
                .position(|e| e["event"] == name)
            {
                self.waited += k + 1;
                return self.events[self.waited - 1].clone();
            }
            self.waited = self.events.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => self.push_event(&line),
                Err(e) => self.fail(&format!("no {name:?} event"), timeout, e),
            }
        }
    }

    /// Every event so far.
    pub fn events(&mut self) -> Vec<Value> {
        while let Ok(line) = self.stdout.try_recv() {
            self.push_event(&line);
        }
        self.events.clone()
    }

    /// Every log line so far.
    pub fn log(&mut self) -> Vec<String> {
        while let Ok(line) = self.logs.try_recv() {
            self.seen.push(line);
        }
        self.seen.clone()
    }

    fn push_event(&mut self, line: &str) {
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v["event"].is_string() => self.events.push(v),
            _ => panic!(
                "stdout line is not a JSON event: {line:?}; log so far:\n{}",
                self.log().join("\n")
            ),
        }
    }

    fn fail(&mut self, what: &str, timeout: Duration, e: RecvTimeoutError) -> ! {
        // The last log lines may still be on their way, and the process on its way out.
        let until = Instant::now() + Duration::from_secs(1);
        while let Ok(line) = self
            .logs
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        let when = match e {
            RecvTimeoutError::Timeout => format!("within {timeout:?}"),
            RecvTimeoutError::Disconnected => match exit_status(&mut self.child, until) {
                Some(status) => format!("before the process exited ({status})"),
                None => "before the process closed its output".into(),
            },
        };
        let events = self.events();
        panic!(
            "{what} {when}; events so far: {events:?}; log so far:\n{}",
            self.log().join("\n")
        )
    }

    /// Send SIGTERM and wait for the exit; returns the exit code and how long it took.
    pub fn terminate(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let t0 = Instant::now();
        let _ = send_signal(self.child.id() as i32, libc::SIGTERM);
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

/// The exit status of `child` once it exits, if that is before `until`.
fn exit_status(child: &mut Child, until: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

fn forward(reader: impl BufRead, tx: mpsc::Sender<String>) {
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// Send signal `sig` to process `pid` (a negative `pid` names a process group). Through libc,
/// not the `kill` command, which a minimal machine may lack (procps). Errors (the process is
/// gone) are returned for the caller to judge.
pub fn send_signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    match unsafe { libc::kill(pid, sig) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
