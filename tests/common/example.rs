//! Built examples run as child processes, for end-to-end tests of what users run.

use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

/// A built example, run as a child process; killed when dropped.
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
        let mut lines = self.lines.into_inner();
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
