//! process.terminal: the pty master reaches the caller's --console-socket with
//! SCM_RIGHTS, and the process has the pty as its controlling terminal.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixListener;

use serde_json::json;

use plinth_tests::{need_root, read_pty, recv_pty_master, unique, Bundle};

#[test]
fn console_socket_receives_the_pty_master() {
    if !need_root("console_socket_receives_the_pty_master") {
        return;
    }
    let mut b = Bundle::busybox("tty; echo cols=$(stty size)");
    b.config["process"]["terminal"] = json!(true);
    b.config["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    b.write();
    let sock = b.tmp.0.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let id = unique("tty");
    let (code, _, err) = b.plinth_detached(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(code, 0, "{err}");
    let (conn, _) = listener.accept().unwrap();
    let master = recv_pty_master(&conn);
    b.start(&id);
    let text = read_pty(master);
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("cols=30 100"), "{text:?}");
}

#[test]
fn terminal_without_console_socket_is_an_error() {
    if !need_root("terminal_without_console_socket_is_an_error") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["process"]["terminal"] = json!(true);
    let id = unique("t");
    let (code, err) = b.create_failing(&id);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("process.terminal"), "{err}");
    assert!(!b.root.join(&id).exists(), "state left behind");
}
