//! The containers' network at the node's edge, as one nftables transaction over
//! netlink: their packets leave with the node's address (masquerade), and nothing
//! opens a connection to a container through the node's forwarding, neither from
//! the site nor from another container (the bridge's traffic is filtered too, through
//! br_netfilter); published ports reach them through the proxy. The equivalent of
//!
//! ```text
//! table ip plinth {
//!   chain postrouting {
//!     type nat hook postrouting priority srcnat;
//!     ip saddr 10.88.0.0/24 oifname != "plinth0" masquerade
//!   }
//!   chain forward {
//!     type filter hook forward priority filter;
//!     oifname "plinth0" ct state ! established,related drop
//!   }
//! }
//! ```
//!
//! The forward chain drops only what goes to the containers: a policy of drop would
//! also drop what other tables on the node accept.
//!
//! The table is added, deleted and added again in the same transaction, so a second
//! call replaces it instead of doubling the rule. No maintained crate builds nftables
//! messages without C bindings generated at build time, hence the few encoders here.

use std::net::Ipv4Addr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::error::{Error, Result};

// linux/netfilter/nfnetlink.h and nf_tables.h.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
const NFT_CT_STATE: u32 = 0;
const NF_CT_ESTABLISHED_OR_RELATED: u32 = 2 | 4;
const NFT_REG_VERDICT: u32 = 0;
const NF_DROP: u32 = 0;
const NF_IP_PRI_NAT_SRC: i32 = 100;
const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_META_OIFNAME: u32 = 7;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const IFNAMSIZ: usize = 16;

/// The table this module owns.
pub const TABLE: &str = "plinth";

/// One netlink attribute, its payload padded to 4 bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(len.next_multiple_of(4), 0);
    out
}

fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, &parts.concat())
}

fn string(kind: u16, s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    attr(kind, &b)
}

fn be32(kind: u16, v: u32) -> Vec<u8> {
    attr(kind, &v.to_be_bytes())
}

/// An expression of a rule: its name and its attributes.
fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
    // NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }
    let mut parts = vec![string(1, name)];
    if !data.is_empty() {
        parts.push(nested(2, data));
    }
    nested(1, &parts)
}

/// NFTA_DATA_VALUE inside `kind`.
fn value(kind: u16, bytes: &[u8]) -> Vec<u8> {
    nested(kind, &[attr(1, bytes)])
}

/// One nfnetlink message: header, nfgenmsg (family, version 0, resource id), attributes.
fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
    let body = attrs.concat();
    let len = 16 + 4 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(&body);
    m
}

fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The transaction that (re)makes the table: `net`/`prefix` masqueraded unless it
/// leaves through `bridge`.
fn batch(net: Ipv4Addr, prefix: u8, bridge: &str) -> Vec<u8> {
    let table = || string(1, TABLE);
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let mut ifname = bridge.as_bytes().to_vec();
    ifname.resize(IFNAMSIZ, 0);
    let v4 = NFPROTO_IPV4;
    let rule = [
        // ip saddr & mask == net
        expr(
            "payload",
            &[
                be32(1, NFT_REG_1),
                be32(2, NFT_PAYLOAD_NETWORK_HEADER),
                be32(3, 12),
                be32(4, 4),
            ],
        ),
        expr(
            "bitwise",
            &[
                be32(1, NFT_REG_1),
                be32(2, NFT_REG_1),
                be32(3, 4),
                value(4, &mask.to_be_bytes()),
                value(5, &[0; 4]),
            ],
        ),
        expr(
            "cmp",
            &[
                be32(1, NFT_REG_1),
                be32(2, NFT_CMP_EQ),
                value(3, &(u32::from(net) & mask).to_be_bytes()),
            ],
        ),
        // oifname != bridge
        expr("meta", &[be32(1, NFT_REG_1), be32(2, NFT_META_OIFNAME)]),
        expr(
            "cmp",
            &[be32(1, NFT_REG_1), be32(2, NFT_CMP_NEQ), value(3, &ifname)],
        ),
        expr("masq", &[]),
    ];
    let guard = [
        // oifname == bridge
        expr("meta", &[be32(1, NFT_REG_1), be32(2, NFT_META_OIFNAME)]),
        expr(
            "cmp",
            &[be32(1, NFT_REG_1), be32(2, NFT_CMP_EQ), value(3, &ifname)],
        ),
        // ct state & (established | related) == 0; the state is a host-order word.
        expr("ct", &[be32(1, NFT_REG_1), be32(2, NFT_CT_STATE)]),
        expr(
            "bitwise",
            &[
                be32(1, NFT_REG_1),
                be32(2, NFT_REG_1),
                be32(3, 4),
                value(4, &NF_CT_ESTABLISHED_OR_RELATED.to_ne_bytes()),
                value(5, &[0; 4]),
            ],
        ),
        expr(
            "cmp",
            &[be32(1, NFT_REG_1), be32(2, NFT_CMP_EQ), value(3, &[0; 4])],
        ),
        // drop: NFTA_IMMEDIATE_DREG verdict, NFTA_IMMEDIATE_DATA { NFTA_DATA_VERDICT {
        // NFTA_VERDICT_CODE } }
        expr(
            "immediate",
            &[
                be32(1, NFT_REG_VERDICT),
                nested(2, &[nested(2, &[be32(1, NF_DROP)])]),
            ],
        ),
    ];
    let acked = |m: u16, seq: u32, attrs: &[Vec<u8>]| {
        message(
            nft(m),
            NLM_F_REQUEST | NLM_F_ACK | flags_for(m),
            seq,
            v4,
            0,
            attrs,
        )
    };
    let chain = |seq: u32, name: &str, hook: u32, priority: i32, kind: &str, rule: &[Vec<u8>]| {
        [
            acked(
                NFT_MSG_NEWCHAIN,
                seq,
                &[
                    table(),
                    string(3, name),
                    nested(4, &[be32(1, hook), be32(2, priority as u32)]),
                    string(7, kind),
                ],
            ),
            acked(
                NFT_MSG_NEWRULE,
                seq + 1,
                &[table(), string(2, name), nested(4, rule)],
            ),
        ]
        .concat()
    };
    let edge =
        |kind: u16, seq: u32| message(kind, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, &[]);
    // Every message between BEGIN and END asks for an acknowledgement: ACKED of them.
    [
        edge(NFNL_MSG_BATCH_BEGIN, 1),
        acked(NFT_MSG_NEWTABLE, 2, &[table()]),
        acked(NFT_MSG_DELTABLE, 3, &[table()]),
        acked(NFT_MSG_NEWTABLE, 4, &[table()]),
        chain(
            5,
            "postrouting",
            NF_INET_POST_ROUTING,
            NF_IP_PRI_NAT_SRC,
            "nat",
            &rule,
        ),
        chain(7, "forward", NF_INET_FORWARD, 0, "filter", &guard),
        edge(NFNL_MSG_BATCH_END, 9),
    ]
    .concat()
}

/// The messages of [`batch`] that are acknowledged (all but BEGIN and END).
const ACKED: usize = 7;

/// The creation flags of a message kind: a table or chain is made if missing, a rule
/// appended; a delete has none.
fn flags_for(m: u16) -> u16 {
    match m {
        NFT_MSG_NEWRULE => NLM_F_CREATE | NLM_F_APPEND,
        NFT_MSG_DELTABLE => 0,
        _ => NLM_F_CREATE,
    }
}

fn failed(reason: impl std::fmt::Display) -> Error {
    Error::Protocol {
        what: format!("nftables: masquerading the containers' network (table ip {TABLE})"),
        reason: reason.to_string(),
    }
}

/// Masquerades `net`/`prefix` on its way out of any interface but `bridge`, and drops
/// new connections forwarded into `bridge`, in the calling thread's network namespace.
pub fn masquerade(net: Ipv4Addr, prefix: u8, bridge: &str) -> Result<()> {
    let mut sock = Socket::new(NETLINK_NETFILTER).map_err(failed)?;
    sock.bind_auto().map_err(failed)?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(failed)?;
    sock.send(&batch(net, prefix, bridge), 0).map_err(failed)?;
    // One acknowledgement per message between BEGIN and END; the first error answers
    // for the whole transaction, which then did nothing.
    let mut acked = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while acked < ACKED {
        let n = sock.recv(&mut &mut buf[..], 0).map_err(failed)?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
            if len < 16 || at + len > n {
                return Err(failed("a malformed answer"));
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap_or_default());
                if code != 0 {
                    return Err(failed(std::io::Error::from_raw_os_error(-code)));
                }
                acked += 1;
            }
            at += len.next_multiple_of(4);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_ones_flagged() {
        assert_eq!(attr(1, b"ab"), [6, 0, 1, 0, b'a', b'b', 0, 0]);
        let n = nested(4, &[be32(1, 4)]);
        assert_eq!(u16::from_ne_bytes([n[2], n[3]]), 4 | NLA_F_NESTED);
        assert_eq!(&n[8..12], &4u32.to_be_bytes());
    }

    /// The real kernel takes the transaction, in a network namespace of a thread's
    /// own, and `nft` (when installed) reads back the rule as written above; a second
    /// call replaces it.
    #[test]
    fn the_kernel_takes_the_masquerade_rule() {
        if !nix::unistd::geteuid().is_root() {
            println!("SKIP the_kernel_takes_the_masquerade_rule: needs root");
            return;
        }
        let listed = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            masquerade(Ipv4Addr::new(10, 88, 0, 1), 24, "plinth0").expect("first");
            masquerade(Ipv4Addr::new(10, 88, 0, 1), 24, "plinth0").expect("again");
            let ns = format!(
                "/proc/{}/task/{}/ns/net",
                std::process::id(),
                nix::unistd::gettid()
            );
            std::process::Command::new("nsenter")
                .arg(format!("--net={ns}"))
                .args(["nft", "list", "table", "ip", TABLE])
                .output()
        })
        .join()
        .expect("thread");
        let Ok(o) = listed else {
            println!("SKIP reading the rule back: no nft here");
            return;
        };
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            text.contains("type filter hook forward priority filter"),
            "{text}"
        );
        assert_eq!(
            text.matches("oifname \"plinth0\" ct state ! established,related drop")
                .count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("type nat hook postrouting priority srcnat"),
            "{text}"
        );
        assert_eq!(
            text.matches("ip saddr 10.88.0.0/24 oifname != \"plinth0\" masquerade")
                .count(),
            1,
            "{text}"
        );
    }
}
