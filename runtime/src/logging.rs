//! runc's logging contract: `--log FILE` and `--log-format text|json`. Engines read the
//! last `"level":"error"` line of the log to report why a command failed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `time="..." level=error msg="..."`, logfmt as runc writes it.
    Text,
    /// `{"level":"error","msg":"...","time":"..."}`.
    Json,
}

struct Logger {
    file: Option<Mutex<File>>,
    format: Format,
    debug: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Sets up logging once, from the global flags.
pub fn init(path: Option<&Path>, format: &str, debug: bool) -> Result<()> {
    let format = match format {
        "text" => Format::Text,
        "json" => Format::Json,
        other => {
            return Err(Error::Invalid(format!(
                "--log-format: {other:?} is not text or json"
            )))
        }
    };
    let file = match path {
        Some(p) if !p.as_os_str().is_empty() => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| Error::io("open --log", p, e))?,
        )),
        _ => None,
    };
    let _ = LOGGER.set(Logger {
        file,
        format,
        debug,
    });
    Ok(())
}

fn line(format: Format, level: &str, msg: &str) -> String {
    let time = crate::state::now_rfc3339();
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::json!({"level": level, "msg": msg, "time": time})
        ),
        Format::Text => format!(
            "time={time:?} level={level} msg={}\n",
            serde_json::Value::String(msg.to_string())
        ),
    }
}

fn emit(level: &str, msg: &str) {
    let Some(l) = LOGGER.get() else {
        eprintln!("{level}: {msg}");
        return;
    };
    if let Some(f) = &l.file {
        if let Ok(mut f) = f.lock() {
            let _ = f.write_all(line(l.format, level, msg).as_bytes());
        }
    }
}

/// Logs an error: to the log file when there is one, and always to stderr, where a
/// person running the command looks.
pub fn error(msg: &str) {
    emit("error", msg);
    eprintln!("plinth: {msg}");
}

/// Logs a warning (to stderr as well).
pub fn warn(msg: &str) {
    emit("warning", msg);
    eprintln!("plinth: warning: {msg}");
}

/// Logs a debug message when `--debug` is on.
pub fn debug(msg: &str) {
    if LOGGER.get().is_some_and(|l| l.debug) {
        emit("debug", msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_have_runc_shape() {
        let l = line(Format::Json, "error", "container \"x\" does not exist");
        let v: serde_json::Value = serde_json::from_str(&l).expect("json");
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
