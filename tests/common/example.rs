//! Built examples run as child processes, for end-to-end tests of what users run.

use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(10);

/// A built example, run as a child process. Dropped, it is stopped as a service manager would
/// stop it: SIGTERM, then a bounded wait for it to exit (so an example that cleans up on
/// SIGTERM, as the inspector removes its generated CA file, gets to), SIGKILL only after that.
pub struct Example {
    child: tokio::process::Child,
    pub first_line: String,
    lines: tokio::sync::Mutex<tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>>,
}

impl Example {
    pub async fn start(name: &str, args: &[&str]) -> Example {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().unwrap();
        let path = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples")
            .join(name);
        let mut child = tokio::process::Command::new(&path)
            .args(args)
            .stdout(std::process::Stdio::piped())
            // The last resort, should SIGTERM not end it (see `Drop`).
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("run {} (built by cargo test): {e}", path.display()));
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first_line = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        Example {
            child,
            first_line,
            lines: tokio::sync::Mutex::new(lines),
        }
    }

    pub async fn next_line(&self) -> String {
        self.lines
            .lock()
            .await
            .next_line()
            .await
            .unwrap()
            .unwrap_or_default()
    }

    /// Waits (bounded) for the process to exit on its own; returns the lines it printed after
    /// the ones already read, and whether it exited successfully.
    pub async fn exit(mut self) -> (Vec<String>, bool) {
        let mut rest = Vec::new();
        let lines = self.lines.get_mut();
        while let Ok(Some(line)) = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .expect("the example exits")
        {
            rest.push(line);
        }
        let status = tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("exits")
            .unwrap();
        (rest, status.success())
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        // `try_wait` reaps without the runtime (none can be awaited in `drop`); a child not
        // reaped yet keeps its pid, so the signal cannot reach another process.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Some(pid) = self.child.id() else { return };
        let sent = std::process::Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !sent {
            return; // kill_on_drop: SIGKILL
        }
        // No event can be awaited here: poll the exit, bounded (an example exits within
        // milliseconds of SIGTERM, the inspector after its graceful shutdown).
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
