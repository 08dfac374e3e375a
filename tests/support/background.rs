//! A `wasmvisor run` in the background, for tests that talk to a running
//! VM (control socket, snapshots, dumps): its stdout and stderr go to
//! files the test reads while it runs, and it is killed if the test
//! fails first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bin;

/// A running `wasmvisor` process.
pub struct Background {
    child: Option<Child>,
    /// Where its stdout and stderr go.
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Background {
    /// Starts `wasmvisor ARGS...` with its output in files under `dir`
    /// (named after `tag`).
    pub fn start<S: AsRef<std::ffi::OsStr>>(dir: &Path, tag: &str, args: &[S]) -> Background {
        let stdout = dir.join(format!("{tag}.stdout"));
        let stderr = dir.join(format!("{tag}.stderr"));
        let child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("wasmvisor starts");
        Background {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until `path` exists (a control socket), failing the test
    /// after `limit` or if the process ended first.
    pub fn wait_for_file(&mut self, path: &Path, limit: Duration) {
        self.wait_until(limit, &format!("{} to appear", path.display()), |_| {
            path.exists()
        });
    }

    /// Waits until its stderr contains `text`.
    pub fn wait_for_stderr(&mut self, text: &str, limit: Duration) {
        self.wait_until(limit, &format!("`{text}` on stderr"), |b| {
            b.stderr().contains(text)
        });
    }

    fn wait_until(&mut self, limit: Duration, what: &str, done: impl Fn(&Background) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "wasmvisor ended ({status}) while the test waited for {what}: {}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `"INT"`, `"TERM"`) to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Waits for the process to end; returns its exit code.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let mut child = self.child.take().expect("still running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wasmvisor did not end within {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
