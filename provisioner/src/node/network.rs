//! The boot NIC: found in sysfs, brought up, configured by DHCP (renewed at half the
//! lease) or, when the config says so, with a static address. The DHCP exchange is
//! blocking socket code, so it runs on tokio's blocking pool and the agent's loop keeps
//! answering signals meanwhile.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

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
                link.lease = lease;
            }
            Err(e) => log(&format!(
                "DHCP renewal on {}: {e}; keeping {}",
                link.name, link.lease.address
            )),
        }
    }
}
