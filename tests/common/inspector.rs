//! The inspector example (`examples/serve.rs`) as a child process, for the end-to-end tests in
//! `tests/inspector.rs` and `tests/inspector_upgrade.rs`.
//!
//! The inspector is found next to the test binary (`target/<profile>/examples/serve`): `cargo
//! test` builds it, `cargo test --test NAME` does not (`cargo build --all-features --example
//! serve` first).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::LIMIT;

/// The inspector as a child process, its stdout read line by line and its stderr whole by two
/// threads (so it never blocks on a full pipe). Dropped while it runs, whatever happened in the
/// test, it is stopped as a service manager would: SIGTERM, a bounded wait, SIGKILL last (so
/// that it removes its generated CA file and its sockets).
pub struct Process {
    child: Child,
    /// stdout, after the lines read already; disconnected once the inspector closed stdout.
    lines: mpsc::Receiver<String>,
    /// All of stderr, sent once the inspector has closed it.
    stderr: mpsc::Receiver<String>,
}

/// How an inspector ended.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    /// stdout lines not read before.
    pub stdout: Vec<String>,
    pub stderr: String,
}

/// The built inspector example, next to the test binary.
pub fn example_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir
        .join("examples")
        .join(format!("serve{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the inspector example was not found at {}; build it with `cargo build --all-features --example serve` (or `cargo test`)",
        path.display()
    );
    path
}

/// `kill -s SIGNAL PID` (std can send no signal but SIGKILL).
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

impl Process {
    /// Runs `cmd` with its output read by two threads; reads no line yet.
    pub fn spawn(mut cmd: Command) -> Process {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining so the child never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });
        let (stderr_tx, stderr_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stderr.read_to_end(&mut all);
            let _ = stderr_tx.send(String::from_utf8_lossy(&all).into_owned());
        });
        Process {
            child,
            lines,
            stderr: stderr_rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line (`None` once stdout is closed); fails after [`LIMIT`].
    pub fn next_line(&self) -> Option<String> {
        match self.lines.recv_timeout(LIMIT) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line from the inspector in {LIMIT:?}")
            }
        }
    }

    /// Reads stdout until a line `is` is the one awaited (returned); fails if a line `fails`
    /// comes first, if stdout closes, or after [`LIMIT`] without it.
    pub fn line_where(&self, is: impl Fn(&str) -> bool, fails: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if is(&line) => return line,
                Ok(line) => assert!(!fails(&line), "the inspector printed {line:?}"),
                Err(error) => panic!("the awaited line did not come: {error:?}"),
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the inspector to close stdout and stderr and exit; kills it (and fails) if it
    /// has not within `limit`.
    pub fn wait(&mut self, limit: Duration) -> Exited {
        let deadline = Instant::now() + limit;
        let mut stdout = Vec::new();
        let stderr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => stdout.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => match self.stderr.recv_timeout(left) {
                    Ok(stderr) => break stderr,
                    Err(_) => self.kill_after(limit),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => self.kill_after(limit),
            }
        };
        // stdout and stderr closed: the process has exited (or is exiting right now).
        let status = self.child.wait().expect("wait for the inspector");
        Exited {
            status,
            stdout,
            stderr,
        }
    }

    fn kill_after(&mut self, limit: Duration) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "the inspector (pid {}) did not exit within {limit:?}",
            self.pid()
        );
    }

    /// Sends `signal` (`"TERM"`, `"INT"`), then waits (bounded by [`LIMIT`]) for the exit.
    pub fn stop(&mut self, signal: &str) -> Exited {
        assert!(
            send_signal(self.pid(), signal),
            "kill -s {signal} {}",
            self.pid()
        );
        self.wait(LIMIT)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.is_running() {
            return; // exited, and reaped: the pid cannot be another process's
        }
        if send_signal(self.pid(), "TERM") {
            // stdout closes when the process exits: an event to wait for, bounded.
            let deadline = Instant::now() + LIMIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(_) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let _ = self.child.kill();
                        break;
                    }
                }
            }
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
