//! Where each container lives on the node: its user and ids, its address on the
//! node-local bridge, its directories; and the fixed places all of them share.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::schema::containers::{SUBID_BASE, SUBID_COUNT, UID_BASE};

/// The node-local bridge the containers' veths are on.
pub const BRIDGE: &str = "plinth0";
/// The bridge's address: the containers' gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The bridge's netmask (a /24: room for the 64 containers a machine runs).
pub const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// Where images are kept (tmpfs).
pub const IMAGES: &str = "/run/plinth/images";
/// Where each container's bundle and root are made.
pub const CONTAINERS: &str = "/run/plinth/containers";
/// The cgroup2 mount.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where the container at `index` of the config lives on the node.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The user the runtime runs as, `ctr-NAME`.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// The first host id of the container's range (its root).
    pub subid: u32,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its veth's name on the node.
    pub veth: String,
    /// Bundle and root file system.
    pub dir: PathBuf,
    /// The user's runtime directory (home, `XDG_RUNTIME_DIR`).
    pub run_dir: PathBuf,
}

impl Slot {
    /// The slot of the `index`th container, `name`.
    pub fn new(index: usize, name: &str) -> Slot {
        let i = index as u32;
        let uid = UID_BASE + i;
        Slot {
            uid,
            gid: uid,
            subid: SUBID_BASE + i * SUBID_COUNT,
            ip: Ipv4Addr::new(10, 88, 0, 10 + index as u8),
            veth: format!("v{name}"),
            dir: Path::new(CONTAINERS).join(name),
            run_dir: PathBuf::from(format!("/run/user/{uid}")),
        }
    }
}
