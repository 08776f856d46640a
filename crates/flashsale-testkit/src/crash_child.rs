//! A child process a crash case kills with `SIGKILL`: the running test binary started again
//! with `--exact <test> --ignored`, so the child is an ordinary (ignored) test of the same
//! file. It learns its directory from an environment variable, writes what it did to a report
//! file there as it goes, and its stderr goes to `log` in that directory, shown if it fails.
//!
//! A crash is a killed process, not a dropped store: in-process, a dropped store's threads and
//! tasks would go on writing while the next store opens the same data, which no real crash does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the parent reads the child's report.
const POLL: Duration = Duration::from_millis(2);

/// A running child test process, killed (and reaped) when dropped if not before.
pub struct CrashChild {
    child: Child,
    dir: PathBuf,
    test: String,
}

impl CrashChild {
    /// Starts the ignored test `test` (its name within the test binary, `module::name` or
    /// `name`) of the running binary, with `dir_var` naming `dir` to it.
    pub fn spawn(test: &str, dir_var: &str, dir: &Path) -> Self {
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--ignored", "--nocapture"])
            .env(dir_var, dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            dir: dir.to_owned(),
            test: test.to_owned(),
        }
    }

    /// The file the child reports to: `report` in its directory.
    pub fn report(&self) -> PathBuf {
        self.dir.join("report")
    }

    /// Waits until `ready` holds for the report's text so far (empty while there is none) and
    /// returns that text. Panics with the child's log if it stops first or `within` passes.
    pub async fn wait_for(&mut self, within: Duration, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        let report = self.report();
        loop {
            let text = std::fs::read_to_string(&report).unwrap_or_default();
            if ready(&text) {
                return text;
            }
            if self.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                let _ = self.child.kill();
                let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                panic!(
                    "the child ({}) stopped, or was not ready within {within:?}: {log}",
                    self.test
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for the child's last report line, `done`, and returns the lines before it.
    pub async fn wait_until_done(&mut self, within: Duration) -> Vec<String> {
        let text = self.wait_for(within, |text| text.ends_with("done\n")).await;
        text.lines()
            .filter(|line| *line != "done")
            .map(str::to_owned)
            .collect()
    }

    /// Kills the child with `SIGKILL` (no shutdown, nothing flushed) and reaps it.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for CrashChild {
    fn drop(&mut self) {
        // A case that panicked before its kill must not leave the child writing to its data.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
