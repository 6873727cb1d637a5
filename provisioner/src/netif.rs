//! Configuring an IPv4 interface with the classic socket ioctls (link up, address,
//! netmask, default route). nix has no wrappers for these, hence the few `unsafe`
//! blocks, each around one ioctl on a struct this module owns.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::error::{io, sys, Error, Result};

/// The kernel's `struct rtentry` (include/uapi/linux/route.h), which libc only defines for musl.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

fn inet_socket(what: &str) -> Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys(format!("{what}: socket")))
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() {
        return Err(Error::Config {
            what: format!("interface {name:?}"),
            reason: "bad interface name".into(),
        });
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and sockaddr is the
    // generic view the ioctls expect.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<()> {
    // SAFETY: `arg` points to a live, correctly sized struct for `req` (ifreq or rtentry),
    // owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if rc < 0 {
        return Err(Error::Sys {
            what: what.to_string(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// Sets IFF_UP on `name`.
pub fn link_up(name: &str) -> Result<()> {
    let what = format!("bringing {name} up");
    let fd = inet_socket(&what)?;
    let mut req = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFFLAGS, &mut req as *mut _ as *mut _, &what)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&fd, libc::SIOCSIFFLAGS, &mut req as *mut _ as *mut _, &what)
}

/// Sets the IPv4 address and netmask of `name`.
pub fn set_address(name: &str, addr: Ipv4Addr, mask: Ipv4Addr) -> Result<()> {
    let what = format!("setting {addr}/{mask} on {name}");
    let fd = inet_socket(&what)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&fd, libc::SIOCSIFADDR, &mut req as *mut _ as *mut _, &what)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl(
        &fd,
        libc::SIOCSIFNETMASK,
        &mut req as *mut _ as *mut _,
        &what,
    )
}

/// Adds a default route via `gw` on `name` (an existing identical route is fine).
pub fn add_default_route(name: &str, gw: Ipv4Addr) -> Result<()> {
    let what = format!("adding default route via {gw} on {name}");
    let fd = inet_socket(&what)?;
    let mut dev: Vec<libc::c_char> = name.bytes().map(|b| b as libc::c_char).chain([0]).collect();
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gw),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: RTF_UP | RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_window: 0,
        rt_irtt: 0,
    };
    match ioctl(&fd, libc::SIOCADDRT, &mut rt as *mut _ as *mut _, &what) {
        Err(Error::Sys {
            source: nix::Error::EEXIST,
            ..
        }) => Ok(()),
        r => r,
    }
}

/// The first Ethernet interface in /sys/class/net (by name), if any.
pub fn first_ethernet(sys_net: &Path) -> Result<Option<(String, [u8; 6])>> {
    let rd = std::fs::read_dir(sys_net).map_err(io("listing", sys_net))?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let dir = sys_net.join(&n);
        // type 1 is ARPHRD_ETHER; loopback is 772.
        let ty = std::fs::read_to_string(dir.join("type")).unwrap_or_default();
        if ty.trim() != "1" {
            continue;
        }
        let addr = std::fs::read_to_string(dir.join("address")).unwrap_or_default();
        if let Some(mac) = parse_mac(addr.trim()) {
            return Ok(Some((n, mac)));
        }
    }
    Ok(None)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in out.iter_mut() {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Formats a MAC the way sysfs and the server do.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
