//! Reloading `--config-dir`: on SIGHUP, and when a file in it changes (inotify on the
//! directory, `machines/` and `profiles/`, settled for a moment so that an editor's or a
//! `git pull`'s several writes make one reload). A set with a bad file is refused whole:
//! the last good set keeps running, and why is said in the log, as a server event
//! (`GET /v1/server`) and in `/metrics`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::error::{sys, Result};
use crate::schema::unix_time;
use crate::server::fleet::Fleet;
use crate::server::metrics::Metrics;
use crate::server::store::ServerEvent;
use crate::server::{log, State};

/// How long the files must stay still before a change is reloaded.
const SETTLE: Duration = Duration::from_millis(300);

/// Loads the files again; on success the new set replaces the old one, else the old one
/// stays. Returns whether it took the new set.
pub fn reload(st: &State, why: &str) -> bool {
    let Some(dir) = st.cfg.config_dir.clone() else {
        return false;
    };
    let (ok, message) = match Fleet::load(&dir, &st.secrets) {
        Ok(f) => {
            let msg = format!(
                "{why}: loaded {}: {} machine files, {} profiles",
                dir.display(),
                f.machines.len(),
                f.profiles.len()
            );
            match st.fleet.write() {
                Ok(mut g) => *g = Arc::new(f),
                Err(p) => *p.into_inner() = Arc::new(f),
            }
            (true, msg)
        }
        Err(e) => (
            false,
            format!("{why}: {e}; the last good set of {} stays", dir.display()),
        ),
    };
    log(&format!("config: {message}"));
    Metrics::count(&st.metrics.reloads, if ok { "ok" } else { "error" });
    let ev = ServerEvent {
        at: unix_time(),
        kind: "config".into(),
        ok,
        message,
    };
    if let Err(e) = st.with_store(|s| s.server_log(ev)) {
        log(&format!("config: recording the reload: {}", e.msg));
    }
    ok
}

/// Starts reloading on SIGHUP and on changes under `--config-dir`.
pub fn watch(st: Arc<State>) -> Result<()> {
    let Some(dir) = st.cfg.config_dir.clone() else {
        return Ok(());
    };
    let mut hup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(|e| {
            crate::error::Error::Net {
                what: "installing the SIGHUP handler".into(),
                source: e,
            }
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(1);
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(sys("starting inotify"))?;
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE;
    let watched: Vec<PathBuf> = vec![dir.clone(), dir.join("machines"), dir.join("profiles")];
    for d in &watched {
        if d.is_dir() {
            inotify
                .add_watch(d, flags)
                .map_err(sys(format!("watching {}", d.display())))?;
        }
    }
    std::thread::spawn(move || loop {
        // A subdirectory made (or made again) since is watched from now on; its making
        // was a change of the top directory, which reloaded. Watching a watched
        // directory again changes nothing.
        for d in &watched[1..] {
            if d.is_dir() {
                let _ = inotify.add_watch(d, flags);
            }
        }
        // Blocks until something changes; a failure ends the watch (SIGHUP still works).
        match inotify.read_events() {
            Ok(evs) if evs.is_empty() => continue,
            Ok(_) => {
                std::thread::sleep(SETTLE);
                // Whatever came in meanwhile is part of the same change.
                let _ = drain(&inotify);
                if tx.blocking_send("a file changed").is_err() {
                    return;
                }
            }
            Err(e) => {
                log(&format!(
                    "config: watching {}: {e}; reload with SIGHUP",
                    dir.display()
                ));
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut watching = true;
        loop {
            let why = tokio::select! {
                s = hup.recv() => match s { Some(()) => "SIGHUP", None => return },
                w = rx.recv(), if watching => match w {
                    Some(w) => w,
                    None => {
                        watching = false;
                        continue;
                    }
                },
            };
            let st = st.clone();
            let _ = tokio::task::spawn_blocking(move || reload(&st, why)).await;
        }
    });
    Ok(())
}

/// Reads whatever events are queued without blocking.
fn drain(inotify: &Inotify) -> nix::Result<()> {
    use std::os::fd::AsFd;
    let fd = inotify.as_fd();
    loop {
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)? == 0 {
            return Ok(());
        }
        inotify.read_events()?;
    }
}
