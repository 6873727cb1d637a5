//! A read-only TFTP server (RFC 1350 with the blksize and tsize options of RFC 2347-2349,
//! which iPXE and PXE ROMs use) for the first file of the boot chain. Each transfer gets
//! its own socket and thread; paths are confined to the served directory.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{net, Result};

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// What a file request resolves to: the bytes to send.
pub type Resolver = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

/// A resolver serving files under `root`, refusing any path that leaves it.
pub fn dir_resolver(root: PathBuf) -> Resolver {
    Arc::new(move |name: &str| {
        let rel = Path::new(name.trim_start_matches('/'));
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        std::fs::read(root.join(rel)).ok()
    })
}

/// Serves forever on `sock`.
pub fn serve(sock: UdpSocket, resolve: Resolver) -> Result<()> {
    let mut buf = [0u8; 1500];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).map_err(net("TFTP: receiving"))?;
        let Some(req) = buf.get(..n).and_then(parse_rrq) else {
            continue;
        };
        let resolve = resolve.clone();
        std::thread::spawn(move || {
            let _ = transfer(peer, req, &resolve);
        });
    }
}

struct Rrq {
    file: String,
    blksize: Option<usize>,
    tsize: bool,
}

fn parse_rrq(p: &[u8]) -> Option<Rrq> {
    if u16::from_be_bytes([*p.first()?, *p.get(1)?]) != RRQ {
        return None;
    }
    let mut fields = p
        .get(2..)?
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let file = fields.next()?;
    let _mode = fields.next()?;
    let mut r = Rrq {
        file,
        blksize: None,
        tsize: false,
    };
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        match k.to_ascii_lowercase().as_str() {
            "blksize" => r.blksize = v.parse::<usize>().ok().map(|b| b.clamp(8, 1468)),
            "tsize" => r.tsize = true,
            _ => {}
        }
    }
    Some(r)
}

fn transfer(peer: SocketAddr, req: Rrq, resolve: &Resolver) -> std::io::Result<()> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(std::io::Error::other)?;
    let sock = UdpSocket::bind(bind)?;
    sock.connect(peer)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let Some(data) = resolve(&req.file) else {
        let mut p = vec![0, ERROR as u8, 0, 1];
        p.extend_from_slice(b"file not found\0");
        sock.send(&p)?;
        return Ok(());
    };
    let mut blksize = 512;
    if req.blksize.is_some() || req.tsize {
        let mut oack = vec![0, OACK as u8];
        if let Some(b) = req.blksize {
            blksize = b;
            oack.extend_from_slice(format!("blksize\0{b}\0").as_bytes());
        }
        if req.tsize {
            oack.extend_from_slice(format!("tsize\0{}\0", data.len()).as_bytes());
        }
        send_until_ack(&sock, &oack, 0)?;
    }
    let mut block: u16 = 1;
    let mut off = 0;
    loop {
        let end = (off + blksize).min(data.len());
        let mut p = vec![0, DATA as u8];
        p.extend_from_slice(&block.to_be_bytes());
        p.extend_from_slice(data.get(off..end).unwrap_or_default());
        send_until_ack(&sock, &p, block)?;
        if end - off < blksize {
            return Ok(());
        }
        off = end;
        block = block.wrapping_add(1);
    }
}

fn send_until_ack(sock: &UdpSocket, p: &[u8], block: u16) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        sock.send(p)?;
        match sock.recv(&mut buf) {
            Ok(n)
                if n >= 4
                    && u16::from_be_bytes([buf[0], buf[1]]) == ACK
                    && u16::from_be_bytes([buf[2], buf[3]]) == block =>
            {
                return Ok(())
            }
            Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == ERROR => {
                return Err(std::io::Error::other("peer aborted"))
            }
            _ => {}
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no ACK after 5 tries",
    ))
}
