//! A read-only TFTP server (RFC 1350 with the blksize and tsize options of RFC 2347-2349,
//! which iPXE and PXE ROMs use) for the first file of the boot chain. Transfers run on a
//! fixed pool of threads (`--tftp-workers`) with a queue as long as the pool; a request
//! that finds the queue full is dropped unanswered (the client asks again). A file is streamed block by block from
//! disk, never read whole, and each packet is sent at most `--tftp-sends` times: a
//! request with a spoofed source address makes the server send that many packets to it,
//! and no more. Paths are confined to the served directory.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{net, Result};

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// How long a packet waits for its ACK before it is sent again.
const ACK_WAIT: Duration = Duration::from_secs(1);

/// What a requested file is.
pub enum Source {
    /// Bytes made for the request (the chain script).
    Bytes(Vec<u8>),
    /// A file on disk, read a block at a time.
    File(File),
}

impl Source {
    fn len(&self) -> std::io::Result<u64> {
        match self {
            Source::Bytes(b) => Ok(b.len() as u64),
            Source::File(f) => Ok(f.metadata()?.len()),
        }
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        match self {
            Source::Bytes(b) => {
                let start = (off as usize).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
            Source::File(f) => {
                // A block may take several reads.
                let mut done = 0;
                while done < buf.len() {
                    let n = f.read_at(&mut buf[done..], off + done as u64)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                Ok(done)
            }
        }
    }
}

/// What a file request resolves to.
pub type Resolver = Arc<dyn Fn(&str) -> Option<Source> + Send + Sync>;

/// Called with a short reason whenever a request or transfer is refused or given up.
pub type OnRefusal = Arc<dyn Fn(&str) + Send + Sync>;

/// Called after a whole file was served: the client, the file as asked, its bytes and the
/// transfer's time.
pub type OnServed = Arc<dyn Fn(SocketAddr, &str, u64, Duration) + Send + Sync>;

/// The pool's size and the retransmit cap.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    /// Transfers at once.
    pub workers: usize,
    /// Sends of one packet at most (the first and its retransmits).
    pub sends: u32,
}

/// A resolver serving files under `root`, refusing any path that leaves it.
pub fn dir_resolver(root: PathBuf) -> Resolver {
    Arc::new(move |name: &str| {
        let rel = Path::new(name.trim_start_matches('/'));
        if rel.as_os_str().is_empty()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let f = File::open(root.join(rel)).ok()?;
        f.metadata().ok().filter(|m| m.is_file())?;
        Some(Source::File(f))
    })
}

/// A request waiting for a worker.
struct Job {
    peer: SocketAddr,
    req: Rrq,
}

/// Serves forever on `sock`.
pub fn serve(
    sock: UdpSocket,
    resolve: Resolver,
    pool: Pool,
    refused: OnRefusal,
    served: OnServed,
) -> Result<()> {
    let workers = pool.workers.max(1);
    // A queue as long as the pool (so that a request arriving while a worker is between
    // two transfers waits for it); a request finding the queue full too is dropped.
    let (tx, rx) = sync_channel::<Job>(workers);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..workers {
        let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
        let resolve = resolve.clone();
        let refused = refused.clone();
        let served = served.clone();
        std::thread::spawn(move || loop {
            let job = match rx.lock() {
                Ok(r) => r.recv(),
                Err(_) => return,
            };
            let Ok(job) = job else { return };
            let started = std::time::Instant::now();
            match transfer(job.peer, &job.req, &resolve, pool.sends) {
                Ok(Some(bytes)) => served(job.peer, &job.req.file, bytes, started.elapsed()),
                Ok(None) => {}
                Err(e) => refused(if e.kind() == std::io::ErrorKind::TimedOut {
                    "no_ack"
                } else {
                    "transfer_failed"
                }),
            }
        });
    }
    let mut buf = [0u8; 1500];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).map_err(net("TFTP: receiving"))?;
        let Some(req) = buf.get(..n).and_then(parse_rrq) else {
            refused("not_a_read_request");
            continue;
        };
        match tx.try_send(Job { peer, req }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => refused("busy"),
            Err(TrySendError::Disconnected(_)) => return Ok(()),
        }
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

/// Sends the file; its length when it was all acknowledged, `None` when there is no
/// such file.
fn transfer(
    peer: SocketAddr,
    req: &Rrq,
    resolve: &Resolver,
    sends: u32,
) -> std::io::Result<Option<u64>> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(std::io::Error::other)?;
    let sock = UdpSocket::bind(bind)?;
    sock.connect(peer)?;
    sock.set_read_timeout(Some(ACK_WAIT))?;
    let Some(data) = resolve(&req.file) else {
        let mut p = vec![0, ERROR as u8, 0, 1];
        p.extend_from_slice(b"file not found\0");
        sock.send(&p)?;
        return Ok(None);
    };
    let len = data.len()?;
    let mut blksize = 512;
    if req.blksize.is_some() || req.tsize {
        let mut oack = vec![0, OACK as u8];
        if let Some(b) = req.blksize {
            blksize = b;
            oack.extend_from_slice(format!("blksize\0{b}\0").as_bytes());
        }
        if req.tsize {
            oack.extend_from_slice(format!("tsize\0{len}\0").as_bytes());
        }
        send_until_ack(&sock, &oack, 0, sends)?;
    }
    let mut block: u16 = 1;
    let mut off: u64 = 0;
    let mut chunk = vec![0u8; blksize];
    loop {
        let n = data.read_at(&mut chunk, off)?;
        let mut p = Vec::with_capacity(4 + n);
        p.extend_from_slice(&[0, DATA as u8]);
        p.extend_from_slice(&block.to_be_bytes());
        p.extend_from_slice(&chunk[..n]);
        send_until_ack(&sock, &p, block, sends)?;
        if n < blksize {
            return Ok(Some(off + n as u64));
        }
        off += n as u64;
        block = block.wrapping_add(1);
    }
}

fn send_until_ack(sock: &UdpSocket, p: &[u8], block: u16, sends: u32) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    for _ in 0..sends.max(1) {
        sock.send(p)?;
        // Wait out the whole ACK_WAIT for the right ACK: stray or duplicate packets do
        // not cause a send each.
        let until = std::time::Instant::now() + ACK_WAIT;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
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
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                // ICMP port unreachable and the like: nobody is there.
                Err(e) => return Err(e),
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no ACK after {sends} sends"),
    ))
}
