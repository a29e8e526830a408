//! Processes a test starts, stopped however the test ends: a failing
//! assertion unwinds through [`Guarded`]'s `Drop`, which kills and reaps the
//! process, so no server outlives its test.
#![allow(dead_code)]
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process, SIGKILLed and reaped when dropped (unless it already exited).
pub struct Guarded(Child);

impl Guarded {
    pub fn new(child: Child) -> Guarded {
        Guarded(child)
    }

    /// SIGKILL now, and wait until it is gone: nothing it did after this
    /// returns can reach a database or a server.
    pub fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guarded {
    /// SIGTERM (a graceful stop, as a service manager asks for one), then
    /// wait up to `within` for the exit; its status, or `None` if it did
    /// not stop in time (it is then SIGKILLed).
    pub fn sigterm(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.sigkill();
        None
    }
}

impl Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// `switchboard serve --config <config>`, quiet (warnings are dropped with
/// its output), killed when the guard is dropped.
pub fn serve(config: &Path) -> Guarded {
    Guarded(
        Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("switchboard starts"),
    )
}
