//! proxyDHCP (PXE specification 2.1, RFC 4578): the site's own DHCP server hands out
//! addresses and knows nothing of PXE; this answers PXE clients beside it with what to
//! boot, and nothing else (no address, no lease).
//!
//! - A `DHCPDISCOVER` on port 67 from a PXE client (vendor class `PXEClient...`) gets a
//!   `DHCPOFFER` with no address (`yiaddr` 0), `PXEClient` in option 60, this server as
//!   `siaddr` and server identifier, the client's UUID (option 97) echoed, and a boot file:
//!   - the client is iPXE (user class `iPXE`, option 77): the boot script's URL, so that
//!     the iPXE that was chain-loaded fetches the script instead of itself again (the
//!     chain-load loop), and a NIC ROM that already is iPXE skips a step;
//!   - else by its architecture (option 93, RFC 4578 section 2.1; or the `Arch:` field
//!     of the vendor class): 0 (x86 BIOS) `undionly.kpxe`, 7 and 9 (x86-64 UEFI)
//!     `ipxe.efi`, both over this server's TFTP;
//!   - any other architecture gets no answer (there is no iPXE for it here).
//! - The client then takes its address from the site's server and asks this one again,
//!   a `DHCPREQUEST` to port 4011 from that address; it gets a `DHCPACK` with the same
//!   boot file.
//!
//! Anything that is not a PXE client's request is ignored: the site's DHCP server
//! answers it. No PXE boot-server discovery (option 43) is offered: clients take the boot
//! file from the offer, which every firmware here does.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::error::{net, sys, Error, Result};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// DHCP message types (option 53).
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const INFORM: u8 = 8;

/// The port PXE clients ask a proxyDHCP server on once they have an address.
pub const PXE_PORT: u16 = 4011;

/// What a PXE client asked, as far as the answer depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The DHCP message type (option 53).
    pub msg: u8,
    /// The transaction id.
    pub xid: u32,
    /// The client's MAC, lower-case, colon-separated.
    pub mac: String,
    /// The client architecture (option 93, or the vendor class's `Arch:` field).
    pub arch: Option<u16>,
    /// The vendor class identifier (option 60).
    pub vendor_class: String,
    /// Whether the client is iPXE (user class `iPXE`, option 77).
    pub ipxe: bool,
    /// The client's address when it has one (`ciaddr`).
    pub ciaddr: Ipv4Addr,
    /// The relay's address, when relayed (`giaddr`).
    pub giaddr: Ipv4Addr,
    raw_header: Vec<u8>,
    uuid: Option<Vec<u8>>,
}

impl Request {
    /// The firmware stage, for the timeline: `ipxe`, `pxe-bios`, `pxe-uefi` or
    /// `pxe-arch-N`.
    pub fn stage(&self) -> String {
        if self.ipxe {
            return "ipxe".into();
        }
        match self.arch {
            Some(0) => "pxe-bios".into(),
            Some(7 | 9) => "pxe-uefi".into(),
            Some(n) => format!("pxe-arch-{n}"),
            None => "pxe".into(),
        }
    }
}

/// Parses a BOOTREQUEST from a PXE client; anything else gives `None`.
pub fn parse(p: &[u8]) -> Option<Request> {
    if p.len() < 240 || p[0] != 1 || p.get(236..240)? != MAGIC {
        return None;
    }
    let hlen = usize::from(p[2]);
    if p[1] != 1 || hlen != 6 {
        return None; // Ethernet only
    }
    let ip = |at: usize| Some(Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]));
    let mut req = Request {
        msg: 0,
        xid: u32::from_be_bytes(p.get(4..8)?.try_into().ok()?),
        mac: p
            .get(28..34)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
        arch: None,
        vendor_class: String::new(),
        ipxe: false,
        ciaddr: ip(12)?,
        giaddr: ip(24)?,
        raw_header: p.get(..236)?.to_vec(),
        uuid: None,
    };
    for (code, val) in crate::dhcp::options(p)? {
        match code {
            53 => req.msg = *val.first()?,
            60 => req.vendor_class = String::from_utf8_lossy(val).into_owned(),
            // RFC 4578 2.1: a list of 16-bit types; the first is the one to boot.
            93 if val.len() >= 2 => req.arch = Some(u16::from_be_bytes([val[0], val[1]])),
            77 => req.ipxe = user_class_is_ipxe(val),
            97 => req.uuid = Some(val.to_vec()),
            _ => {}
        }
    }
    if !req.vendor_class.starts_with("PXEClient") || req.msg == 0 {
        return None;
    }
    if req.arch.is_none() {
        // "PXEClient:Arch:00000:UNDI:002001" (PXE 2.1, section 2.2.5).
        req.arch = req
            .vendor_class
            .split(':')
            .skip_while(|f| *f != "Arch")
            .nth(1)
            .and_then(|a| a.parse().ok());
    }
    Some(req)
}

/// iPXE sends its user class bare (`iPXE`); RFC 3004 wants each class length-prefixed.
/// Either form counts.
fn user_class_is_ipxe(val: &[u8]) -> bool {
    if val == b"iPXE" {
        return true;
    }
    let mut rest = val;
    while let Some((&len, tail)) = rest.split_first() {
        let Some(class) = tail.get(..usize::from(len)) else {
            return false;
        };
        if class == b"iPXE" {
            return true;
        }
        rest = &tail[usize::from(len)..];
    }
    false
}

/// What a client is told to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// A file of this server's TFTP (an iPXE binary).
    Tftp(&'static str),
    /// The boot script's URL, for iPXE.
    Script(String),
}

impl BootFile {
    /// The name the client is given (option 67 and the `file` field).
    pub fn name(&self) -> &str {
        match self {
            BootFile::Tftp(f) => f,
            BootFile::Script(u) => u,
        }
    }

    /// A short, fixed label (metrics, the timeline): the file, or `script`.
    pub fn label(&self) -> &'static str {
        match self {
            BootFile::Tftp(f) => f,
            BootFile::Script(_) => "script",
        }
    }
}

/// The iPXE binary for BIOS PXE ROMs (Debian's `ipxe`).
pub const BIOS_FILE: &str = "undionly.kpxe";
/// The iPXE binary for x86-64 UEFI (Debian's `ipxe`).
pub const UEFI_FILE: &str = "ipxe.efi";

/// The boot script URL iPXE is given for `mac`: the MAC as the server saw it, the UUID
/// and serial for iPXE to fill in (it expands settings in a DHCP file name).
pub fn script_url(http_base: &str, mac: &str) -> String {
    format!(
        "{}/boot.ipxe?mac={mac}&uuid=${{uuid}}&serial=${{serial}}",
        http_base.trim_end_matches('/')
    )
}

/// What to boot, or `None` when this server has nothing for the client.
pub fn boot_file(req: &Request, http_base: &str) -> Option<BootFile> {
    if req.ipxe {
        return Some(BootFile::Script(script_url(http_base, &req.mac)));
    }
    match req.arch {
        Some(0) => Some(BootFile::Tftp(BIOS_FILE)),
        Some(7 | 9) => Some(BootFile::Tftp(UEFI_FILE)),
        _ => None,
    }
}

/// The answer to `req`: a BOOTREPLY of type `msg` with no address, `server` as next
/// server and identifier, and `file`.
pub fn reply(req: &Request, msg: u8, server: Ipv4Addr, file: &str) -> Vec<u8> {
    let mut p = req.raw_header.clone();
    p[0] = 2; // BOOTREPLY
    p[3] = 0; // hops
    p[8..12].fill(0); // secs, and flags below are the client's
    p[10..12].copy_from_slice(&req.raw_header[10..12]);
    p[12..16].fill(0); // ciaddr
    p[16..20].fill(0); // yiaddr: no address from us
    p[20..24].copy_from_slice(&server.octets()); // siaddr: TFTP from here
    p[44..108].fill(0); // sname
    p[108..236].fill(0); // file
    if file.len() < 128 {
        p[108..108 + file.len()].copy_from_slice(file.as_bytes());
    }
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, msg]);
    p.extend_from_slice(&[54, 4]);
    p.extend_from_slice(&server.octets());
    p.extend_from_slice(&[60, 9]);
    p.extend_from_slice(b"PXEClient");
    if let Some(u) = req.uuid.as_ref().filter(|u| u.len() < 256) {
        p.push(97);
        p.push(u.len() as u8);
        p.extend_from_slice(u);
    }
    // Option 67 as well as the `file` field: a URL can be longer than the field.
    if let Ok(len) = u8::try_from(file.len()) {
        p.push(67);
        p.push(len);
        p.extend_from_slice(file.as_bytes());
    }
    p.push(255);
    p.resize(p.len().max(300), 0);
    p
}

/// Called with each request answered and what it was given, after the answer is sent.
pub type OnAnswered = Arc<dyn Fn(&Request, &BootFile) + Send + Sync>;

/// What the proxyDHCP service needs from the rest of the server.
pub struct Handler {
    /// This server's address on the boot network (next server, server identifier).
    pub server: Ipv4Addr,
    /// The plain-HTTP base URL PXE clients reach the boot chain at.
    pub http_base: String,
    /// Called with each request answered and what it was given, after the answer is sent.
    pub answered: OnAnswered,
}

/// The sockets: port 67 on every address of the interface holding `server` (broadcasts
/// arrive at the wildcard address), and `server`:4011.
pub struct Sockets {
    discover: UdpSocket,
    request: UdpSocket,
    ifname: String,
}

impl Sockets {
    /// Binds both, naming `flag` in any error.
    pub fn bind(server: Ipv4Addr, flag: &str) -> Result<Sockets> {
        let ifname = interface_of(server).ok_or_else(|| Error::Config {
            what: format!("{flag} {server}"),
            reason: "no interface of this host has that address".into(),
        })?;
        let discover = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67))
            .map_err(net(format!("{flag} {server}: binding port 67")))?;
        discover
            .set_broadcast(true)
            .map_err(net(format!("{flag}: SO_BROADCAST")))?;
        // Only the boot network's broadcasts, and our offers go out on it.
        nix::sys::socket::setsockopt(
            &discover.as_fd(),
            nix::sys::socket::sockopt::BindToDevice,
            &std::ffi::OsString::from(&ifname),
        )
        .map_err(sys(format!("{flag} {server}: SO_BINDTODEVICE {ifname}")))?;
        let request = UdpSocket::bind(SocketAddrV4::new(server, PXE_PORT))
            .map_err(net(format!("{flag} {server}: binding port {PXE_PORT}")))?;
        Ok(Sockets {
            discover,
            request,
            ifname,
        })
    }

    /// The interface answers go out on.
    pub fn interface(&self) -> &str {
        &self.ifname
    }

    /// Serves both ports on two threads, forever.
    pub fn serve(self, h: Handler) {
        let h = Arc::new(h);
        let h2 = h.clone();
        let discover = self.discover;
        let request = self.request;
        std::thread::spawn(move || serve_port(&discover, &h, true));
        std::thread::spawn(move || serve_port(&request, &h2, false));
    }
}

fn serve_port(sock: &UdpSocket, h: &Handler, broadcast_port: bool) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Some(req) = buf.get(..n).and_then(parse) else {
            continue;
        };
        let Some(file) = boot_file(&req, &h.http_base) else {
            crate::server::log(&format!(
                "proxyDHCP: no boot file for {} (architecture {:?}, {:?})",
                req.mac, req.arch, req.vendor_class
            ));
            continue;
        };
        let (msg, to) = match (broadcast_port, req.msg) {
            (true, DISCOVER) => (OFFER, offer_destination(&req)),
            (false, REQUEST | INFORM) => (ACK, peer),
            // A DHCPREQUEST on 67 is for the site's server; nothing else is ours.
            _ => continue,
        };
        let p = reply(&req, msg, h.server, file.name());
        if let Err(e) = sock.send_to(&p, to) {
            crate::server::log(&format!("proxyDHCP: answering {} at {to}: {e}", req.mac));
            continue;
        }
        (h.answered)(&req, &file);
    }
}

/// Where an offer goes: through the relay when relayed, else broadcast (the client has
/// no address yet).
fn offer_destination(req: &Request) -> SocketAddr {
    if !req.giaddr.is_unspecified() {
        SocketAddr::V4(SocketAddrV4::new(req.giaddr, 67))
    } else {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
    }
}

/// The interface holding `addr`.
fn interface_of(addr: Ipv4Addr) -> Option<String> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let sin = a.address.as_ref()?.as_sockaddr_in()?;
        (sin.ip() == addr).then_some(a.interface_name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DHCPDISCOVER as a PXE client sends it.
    fn discover(arch: Option<u16>, vendor: &str, user_class: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        p[10] = 0x80;
        p[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, DISCOVER]);
        p.extend_from_slice(&[60, vendor.len() as u8]);
        p.extend_from_slice(vendor.as_bytes());
        if let Some(a) = arch {
            p.extend_from_slice(&[93, 2]);
            p.extend_from_slice(&a.to_be_bytes());
        }
        if let Some(u) = user_class {
            p.extend_from_slice(&[77, u.len() as u8]);
            p.extend_from_slice(u);
        }
        p.extend_from_slice(&[97, 17, 0]);
        p.extend_from_slice(&[7; 16]);
        p.push(255);
        p
    }

    const BASE: &str = "http://10.33.0.2:8080";

    #[test]
    fn each_firmware_gets_its_file() {
        let bios = parse(&discover(Some(0), "PXEClient:Arch:00000:UNDI:002001", None));
        let bios = bios.expect("a PXE client");
        assert_eq!(bios.mac, "52:54:00:12:34:56");
        assert_eq!(boot_file(&bios, BASE), Some(BootFile::Tftp(BIOS_FILE)));
        assert_eq!(bios.stage(), "pxe-bios");
        for arch in [7, 9] {
            let uefi = parse(&discover(
                Some(arch),
                "PXEClient:Arch:00007:UNDI:003000",
                None,
            ));
            let uefi = uefi.expect("a PXE client");
            assert_eq!(boot_file(&uefi, BASE), Some(BootFile::Tftp(UEFI_FILE)));
        }
        // The architecture from the vendor class alone.
        let old = parse(&discover(None, "PXEClient:Arch:00007:UNDI:003000", None));
        assert_eq!(old.and_then(|r| r.arch), Some(7));
        // iPXE, bare or RFC 3004 form, gets the script whatever its architecture.
        for uc in [&b"iPXE"[..], &[4, b'i', b'P', b'X', b'E'][..]] {
            let ipxe = parse(&discover(
                Some(7),
                "PXEClient:Arch:00007:UNDI:003010",
                Some(uc),
            ));
            let ipxe = ipxe.expect("a PXE client");
            assert_eq!(
                boot_file(&ipxe, BASE),
                Some(BootFile::Script(
                    "http://10.33.0.2:8080/boot.ipxe?mac=52:54:00:12:34:56&uuid=${uuid}&serial=${serial}"
                        .into()
                ))
            );
        }
        // ARM64 UEFI: nothing to give.
        let arm = parse(&discover(
            Some(11),
            "PXEClient:Arch:00011:UNDI:003000",
            None,
        ));
        assert_eq!(arm.and_then(|r| boot_file(&r, BASE)), None);
        // Not a PXE client: the site's DHCP server's business.
        assert_eq!(parse(&discover(Some(0), "udhcp 1.36", None)), None);
        assert_eq!(parse(&[1, 2, 3]), None);
    }

    #[test]
    fn the_offer_gives_no_address_and_names_us() {
        let req = parse(&discover(Some(7), "PXEClient:Arch:00007:UNDI:003000", None))
            .expect("a PXE client");
        let server = Ipv4Addr::new(10, 33, 0, 2);
        let p = reply(&req, OFFER, server, UEFI_FILE);
        assert_eq!(p[0], 2);
        assert_eq!(&p[4..8], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&p[16..20], &[0, 0, 0, 0], "yiaddr");
        assert_eq!(&p[20..24], &server.octets(), "siaddr");
        assert_eq!(&p[28..34], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(&p[108..116], b"ipxe.efi");
        assert_eq!(p[116], 0);
        let opts = &p[240..];
        let find = |code: u8| {
            let mut i = 0;
            while i < opts.len() && opts[i] != 255 {
                if opts[i] == code {
                    return Some(opts[i + 2..i + 2 + usize::from(opts[i + 1])].to_vec());
                }
                i += 2 + usize::from(opts[i + 1]);
            }
            None
        };
        assert_eq!(find(53), Some(vec![OFFER]));
        assert_eq!(find(54), Some(server.octets().to_vec()));
        assert_eq!(find(60), Some(b"PXEClient".to_vec()));
        assert_eq!(find(67), Some(b"ipxe.efi".to_vec()));
        let mut uuid = vec![0];
        uuid.extend_from_slice(&[7; 16]);
        assert_eq!(find(97), Some(uuid), "the client's UUID echoed");
        // A URL longer than the file field travels in option 67 alone.
        let long = format!("http://10.33.0.2:8080/{}", "x".repeat(150));
        let p = reply(&req, ACK, server, &long);
        assert_eq!(p[108], 0);
        assert!(p.windows(long.len()).any(|w| w == long.as_bytes()));
    }
}
