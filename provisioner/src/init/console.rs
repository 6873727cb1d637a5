//! Logging to the console. PID 1 must never panic, and `println!` panics when the write
//! fails (a console that went away), so every line goes through here and errors are dropped.

use std::io::Write;

/// Writes one line to stderr (the console for PID 1), prefixed with the uptime.
pub fn log(msg: &str) {
    let ms = crate::init::uptime_ms();
    let line = format!("[{:>5}.{:03}] plinth-init: {msg}\n", ms / 1000, ms % 1000);
    let _ = std::io::stderr().write_all(line.as_bytes());
}
