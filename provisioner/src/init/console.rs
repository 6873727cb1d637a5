//! Logging to the console. PID 1 must never panic, and `println!` panics when the write
//! fails (a console that went away), so every line goes through here and errors are
//! dropped. Each line is also kept (a bounded buffer) for the agent to stream to the server.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

/// Lines kept for streaming at most; the oldest go first when the server is away.
pub const KEPT: usize = 2000;

static PENDING: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// Writes one line to stderr (the console for PID 1), prefixed with the uptime.
pub fn log(msg: &str) {
    let ms = crate::init::uptime_ms();
    let line = format!("[{:>5}.{:03}] plinth-init: {msg}", ms / 1000, ms % 1000);
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
    if let Ok(mut q) = PENDING.lock() {
        if q.len() >= KEPT {
            q.pop_front();
        }
        q.push_back(line);
    }
}

/// Takes the lines logged since the last call.
pub fn drain() -> Vec<String> {
    PENDING
        .lock()
        .map(|mut q| q.drain(..).collect())
        .unwrap_or_default()
}
