//! Host services plinth-init runs and keeps running (containerd and kubelet on a joining
//! node): each started with a known environment, its output streamed to the server line
//! by line (`service/NAME/stdout`, `service/NAME/stderr`), every start and exit a
//! `service` event, and started again after a back-off that doubles from 1 s to 30 s and
//! starts over once a run has lasted a minute.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::schema::{EventKind, LogLine};

/// The PATH services get: the kernel gives PID 1 none, and kubelet and containerd find
/// `mount`, `iptables` and the shim through it.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);
const STEADY: Duration = Duration::from_secs(60);

/// One service.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its name in events and log sources (lower case, at most 12 characters).
    pub name: &'static str,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Runs `spec` for as long as the returned future is polled, starting it again whenever
/// it ends; dropping the future kills the running process.
pub async fn supervise(
    spec: Spec,
    events: mpsc::UnboundedSender<(EventKind, Map<String, Value>)>,
    logs: mpsc::Sender<LogLine>,
) {
    let mut delay = FIRST_DELAY;
    loop {
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut d = Map::new();
        d.insert("service".into(), json!(spec.name));
        match cmd.spawn() {
            Ok(mut child) => {
                d.insert("state".into(), json!("running"));
                d.insert("pid".into(), json!(child.id()));
                let _ = events.send((EventKind::Service, d));
                let out = child
                    .stdout
                    .take()
                    .map(|o| lines(o, spec.name, "stdout", logs.clone()));
                let err = child
                    .stderr
                    .take()
                    .map(|e| lines(e, spec.name, "stderr", logs.clone()));
                let status = child.wait().await;
                // The output to its end: the last lines say why it stopped.
                if let Some(o) = out {
                    let _ = o.await;
                }
                if let Some(e) = err {
                    let _ = e.await;
                }
                if started.elapsed() >= STEADY {
                    delay = FIRST_DELAY;
                }
                let mut d = Map::new();
                d.insert("service".into(), json!(spec.name));
                d.insert("state".into(), json!("exited"));
                match status {
                    Ok(s) => {
                        if let Some(code) = s.code() {
                            d.insert("exitCode".into(), json!(code));
                        }
                        if let Some(sig) = s.signal() {
                            d.insert("signal".into(), json!(sig));
                        }
                    }
                    Err(e) => {
                        d.insert("error".into(), json!(format!("waiting for it: {e}")));
                    }
                }
                d.insert("restartInSecs".into(), json!(delay.as_secs()));
                let _ = events.send((EventKind::Service, d));
            }
            Err(e) => {
                d.insert("state".into(), json!("failed"));
                d.insert(
                    "error".into(),
                    json!(format!("starting {}: {e}", spec.program.display())),
                );
                d.insert("restartInSecs".into(), json!(delay.as_secs()));
                let _ = events.send((EventKind::Error, d));
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// Streams `r`'s lines as `service/NAME/STREAM`; a line the queue has no room for is
/// dropped (the server counts what it drops, not the node).
fn lines(
    r: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    stream: &'static str,
    logs: mpsc::Sender<LogLine>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let source = format!("service/{name}/{stream}");
        let mut r = BufReader::new(r).lines();
        while let Ok(Some(text)) = r.next_line().await {
            let _ = logs.try_send(LogLine {
                source: source.clone(),
                text,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_started_again_and_its_lines_and_exits_reported() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (etx, mut erx) = mpsc::unbounded_channel();
        let (ltx, mut lrx) = mpsc::channel(16);
        let spec = Spec {
            name: "probe",
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo \"out $PATH\"; echo err >&2; exit 3".into(),
            ],
        };
        rt.block_on(async {
            let sup = supervise(spec, etx, ltx);
            // Two runs: 1 s back-off between them.
            let _ = tokio::time::timeout(Duration::from_millis(1800), sup).await;
        });
        let mut events = Vec::new();
        while let Ok(e) = erx.try_recv() {
            events.push(e);
        }
        let states: Vec<_> = events
            .iter()
            .map(|(_, d)| d["state"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            states,
            ["running", "exited", "running", "exited"],
            "{events:?}"
        );
        assert_eq!(events[1].1["exitCode"], 3);
        assert_eq!(events[1].1["restartInSecs"], 1);
        assert_eq!(events[3].1["restartInSecs"], 2);
        let mut lines = Vec::new();
        while let Ok(l) = lrx.try_recv() {
            lines.push((l.source, l.text));
        }
        assert!(lines.contains(&("service/probe/stdout".into(), format!("out {PATH}"))));
        assert!(lines.contains(&("service/probe/stderr".into(), "err".into())));
    }
}
