//! The boot NIC: found in sysfs, brought up, configured by DHCP (renewed at half the
//! lease) or, when the config says so, with a static address; `/etc/resolv.conf` from
//! the lease's name servers and domain, or the static config's. The DHCP exchange is
//! blocking socket code, so it runs on tokio's blocking pool and the agent's loop keeps
//! answering signals meanwhile.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use super::apply;
use crate::dhcp;
use crate::error::{Error, Result};
use crate::init::console::log;
use crate::init::uptime_ms;
use crate::netif;
use crate::schema::config::{parse_cidr, StaticNetwork};

/// The NIC and what DHCP gave it.
#[derive(Debug, Clone)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Its MAC.
    pub mac: [u8; 6],
    /// The lease.
    pub lease: dhcp::Lease,
    /// When the link came up (ms since boot).
    pub link_up_ms: u64,
    /// When DHCP finished (ms since boot).
    pub dhcp_ms: u64,
}

fn find_nic() -> Result<(String, [u8; 6])> {
    let sys_net = Path::new("/sys/class/net");
    // The NIC appears when its driver binds, which may lag the module load a little.
    for _ in 0..100 {
        if let Some(nic) = netif::first_ethernet(sys_net)? {
            return Ok(nic);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Config {
        what: "network".into(),
        reason: "no Ethernet interface in /sys/class/net".into(),
    })
}

fn dhcp_blocking(name: &str, mac: [u8; 6]) -> Result<dhcp::Lease> {
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ (uptime_ms() as u32);
    let lease = dhcp::acquire(name, mac, xid, Duration::from_secs(6))?;
    netif::set_address(name, lease.address, lease.netmask)?;
    if let Some(gw) = lease.router.filter(|g| *g != Ipv4Addr::UNSPECIFIED) {
        netif::add_default_route(name, gw)?;
    }
    Ok(lease)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Protocol {
            what: "a blocking task".into(),
            reason: e.to_string(),
        })?
}

/// Where the node's resolver (musl's, containerd's, kubelet's) reads its name servers.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// resolv.conf's text: the first three of `servers` (the resolver reads no more) and
/// `domain` as the search domain. With no server, the file still says where it came from
/// (kubelet and containerd read it, and an empty one is valid).
pub fn resolv_conf(servers: &[Ipv4Addr], domain: Option<&str>, from: &str) -> String {
    let mut t = format!("{RESOLV_MARK}{from}\n");
    if let Some(d) = domain {
        t.push_str(&format!("search {d}\n"));
    }
    for s in servers.iter().take(3) {
        t.push_str(&format!("nameserver {s}\n"));
    }
    t
}

/// How a resolv.conf the node wrote begins: one that does not is someone else's (the
/// config's `files`), and stays.
const RESOLV_MARK: &str = "# written by plinth-init from ";

/// Writes `text` to `path` when it differs and the file there is absent or the node's
/// own (through [`apply::write_file`]: a reader never sees half of it); whether it was
/// written.
pub fn write_resolv_conf(path: &Path, text: &str) -> Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.starts_with(RESOLV_MARK) => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Unreadable (not UTF-8, a directory): not the node's to replace.
        Err(_) => return Ok(false),
    }
    apply::write_file(
        path,
        text.as_bytes(),
        0o644,
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    )
}

/// resolv.conf from a DHCP lease; a failure is logged (the node runs on without names).
fn resolv_from_lease(lease: &dhcp::Lease) {
    let text = resolv_conf(&lease.dns, lease.domain.as_deref(), "the DHCP lease");
    match write_resolv_conf(Path::new(RESOLV_CONF), &text) {
        Ok(true) => log(&format!(
            "{RESOLV_CONF}: name servers {:?}, domain {:?}",
            lease.dns, lease.domain
        )),
        Ok(false) => {}
        Err(e) => log(&format!("{e}")),
    }
}

/// Brings the first Ethernet interface up with DHCP.
pub async fn up() -> Result<Link> {
    let (name, mac) = blocking(find_nic).await?;
    if let Err(e) = netif::link_up("lo") {
        log(&format!("loopback: {e}"));
    }
    netif::link_up(&name)?;
    let link_up_ms = uptime_ms();
    let n = name.clone();
    let lease = blocking(move || dhcp_blocking(&n, mac)).await?;
    let dhcp_ms = uptime_ms();
    resolv_from_lease(&lease);
    log(&format!(
        "{name} ({}) has {}/{} via {:?}, lease {:?}s",
        netif::format_mac(&mac),
        lease.address,
        lease.netmask,
        lease.router,
        lease.lease_secs
    ));
    Ok(Link {
        name,
        mac,
        lease,
        link_up_ms,
        dhcp_ms,
    })
}

/// Sets a static address from the config on the link.
pub fn set_static(link: &Link, s: &StaticNetwork) -> Result<()> {
    let (addr, mask) = parse_cidr(&s.address).ok_or_else(|| Error::Config {
        what: "network.static.address".into(),
        reason: format!("{:?} is not ADDRESS/PREFIX", s.address),
    })?;
    netif::set_address(&link.name, addr, mask)?;
    if let Some(gw) = s.gateway {
        netif::add_default_route(&link.name, gw)?;
    }
    if !s.nameservers.is_empty() {
        let text = resolv_conf(&s.nameservers, None, "network.static.nameservers");
        write_resolv_conf(Path::new(RESOLV_CONF), &text)?;
    }
    Ok(())
}

/// Renews the DHCP lease at half its time, forever (a lease without a time is renewed
/// hourly).
pub async fn renew_forever(mut link: Link) {
    loop {
        let secs = u64::from(link.lease.lease_secs.unwrap_or(7200)) / 2;
        tokio::time::sleep(Duration::from_secs(secs.max(30))).await;
        let (n, mac) = (link.name.clone(), link.mac);
        match blocking(move || dhcp_blocking(&n, mac)).await {
            Ok(lease) => {
                if lease.address != link.lease.address {
                    log(&format!(
                        "DHCP renewal: address {} -> {}",
                        link.lease.address, lease.address
                    ));
                }
                resolv_from_lease(&lease);
                link.lease = lease;
            }
            Err(e) => log(&format!(
                "DHCP renewal on {}: {e}; keeping {}",
                link.name, link.lease.address
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_names_at_most_three_servers_and_the_domain() {
        let ips: Vec<Ipv4Addr> = (1..=4).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(
            resolv_conf(&ips, Some("lab.example"), "the DHCP lease"),
            "# written by plinth-init from the DHCP lease\nsearch lab.example\nnameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n"
        );
        assert_eq!(
            resolv_conf(&[], None, "x"),
            "# written by plinth-init from x\n"
        );
    }

    #[test]
    fn resolv_conf_is_written_only_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("plinth-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("resolv.conf");
        let (a, b) = (
            resolv_conf(&[Ipv4Addr::new(10, 0, 0, 1)], None, "a"),
            resolv_conf(&[Ipv4Addr::new(10, 0, 0, 2)], None, "b"),
        );
        assert!(write_resolv_conf(&p, &a).expect("first"));
        assert!(!write_resolv_conf(&p, &a).expect("same"));
        assert!(write_resolv_conf(&p, &b).expect("changed"));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), b);
        // The config's own file (its `files`) is left as it is.
        std::fs::write(&p, "nameserver 192.0.2.53\n").expect("theirs");
        assert!(!write_resolv_conf(&p, &a).expect("theirs kept"));
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "nameserver 192.0.2.53\n"
        );
        let left: Vec<_> = std::fs::read_dir(&dir).expect("ls").collect();
        assert_eq!(left.len(), 1, "a temporary file left behind");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
