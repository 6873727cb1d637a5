//! plinth-server: command-line parsing only; the server is plinth_provisioner::server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use plinth_provisioner::server::limits::{parse_size, Limits};
use plinth_provisioner::server::store::Limits as Retention;
use plinth_provisioner::server::{self, parse_duration, Config};

#[derive(Parser)]
#[command(
    name = "plinth-server",
    about = "Serve the Plinth boot chain, enrol nodes and hand them their config"
)]
struct Cli {
    /// Plain-HTTP listen address for the boot chain (ADDR:PORT; port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// HTTPS listen address (default: the --listen host, the next port).
    #[arg(long)]
    listen_tls: Option<SocketAddr>,
    /// SNTP listen address (UDP), which nodes set their clock from before any TLS.
    #[arg(long)]
    listen_sntp: Option<SocketAddr>,
    /// The directory `plinth-boot build` wrote (boot.ipxe, vmlinuz, initrd).
    #[arg(long)]
    boot_dir: PathBuf,
    /// The server's state: CA, operators, machines, logs, audit trail.
    #[arg(long)]
    data: PathBuf,
    /// The plain-HTTP URL machines' firmware uses (default: the Host of each request).
    #[arg(long)]
    advertise_http: Option<String>,
    /// The HTTPS URL nodes use (default: the host each boot script was asked at, TLS
    /// port); several servers of one fleet separated by commas, which nodes fail over among.
    #[arg(long)]
    advertise_tls: Option<String>,
    /// Another name (DNS or IP) for the serving certificate; may be repeated.
    #[arg(long = "tls-name")]
    tls_names: Vec<String>,
    /// Also serve the boot directory read-only over TFTP on this address (e.g. 0.0.0.0:69;
    /// with --proxy-dhcp, that address's port 69 by default).
    #[arg(long)]
    tftp: Option<SocketAddr>,
    /// Answer PXE clients as proxyDHCP beside the site's DHCP server, as this address of
    /// the boot network (BIOS ROMs get undionly.kpxe, UEFI ipxe.efi, iPXE its script).
    #[arg(long, value_name = "ADDR")]
    proxy_dhcp: Option<std::net::Ipv4Addr>,
    /// Where undionly.kpxe and ipxe.efi come from (Debian's `ipxe` package).
    #[arg(long, default_value = "/usr/lib/ipxe")]
    ipxe_dir: PathBuf,
    /// How long an enrolment token is accepted (90s, 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    token_ttl: Duration,
    /// How long a node's client certificate lives; nodes renew at half-life.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_lifetime: Duration,
    /// The fleet's files, kept in git: machines/*.yaml, profiles/*.yaml, defaults.yaml
    /// (reloaded on SIGHUP and when a file changes).
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Connections one client address may hold open at once, per listener.
    #[arg(long, default_value_t = 32)]
    max_conns_per_addr: usize,
    /// The time a request may take from its first byte to its answer, however it trickles.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// The largest request body (4096, 64K, 2M).
    #[arg(long, default_value = "2M", value_parser = parse_size)]
    max_body: u64,
    /// New discovery records (machines nobody declared) per minute.
    #[arg(long, default_value_t = 10)]
    discoveries_per_minute: u32,
    /// Discovered machines waiting for an operator, at most.
    #[arg(long, default_value_t = 256)]
    max_discovered: usize,
    /// Boots kept per machine (events and logs).
    #[arg(long, default_value_t = 10)]
    keep_boots: usize,
    /// Log bytes kept per boot (10M).
    #[arg(long, default_value = "10M", value_parser = parse_size)]
    max_log_per_boot: u64,
    /// How long events and logs are kept after they arrive (90m, 12h, 30d); the store
    /// drops them (on etcd, by leases), at most a sixteenth of it (1 s to an hour) later.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    keep_history: Duration,
    /// The state's store: the embedded one in --data (default), or etcd shared by
    /// several servers (etcd://HOST:PORT[,HOST:PORT...]).
    #[arg(long)]
    store: Option<String>,
    /// The CA and the operators' tokens, when several servers on one --store share them
    /// (default: --data). The CA key stays in files; it never goes into the store.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// TFTP transfers at once; more requests are dropped until one ends.
    #[arg(long, default_value_t = 8)]
    tftp_workers: usize,
    /// Sends of one TFTP packet at most (the first and its retransmits).
    #[arg(long, default_value_t = 4)]
    tftp_sends: u32,
    /// A Kubernetes cluster's kubeconfig: the server mints each joining machine a
    /// bootstrap token and approves its kubelet's certificates (docs/kubernetes.md).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// How long a minted bootstrap token is accepted by the cluster.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    bootstrap_token_ttl: Duration,
    /// The directory of the extensions machine configs list by name (`plinth-boot
    /// extension` makes them); a node is served those its config lists.
    #[arg(long, value_name = "DIR")]
    extensions_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config {
        listen: cli.listen,
        listen_tls: cli.listen_tls,
        listen_sntp: cli.listen_sntp,
        boot_dir: cli.boot_dir,
        data: cli.data,
        advertise_http: cli.advertise_http,
        advertise_tls: cli.advertise_tls,
        tls_names: cli.tls_names,
        tftp: cli.tftp,
        proxy_dhcp: cli.proxy_dhcp,
        ipxe_dir: cli.ipxe_dir,
        token_ttl: cli.token_ttl,
        cert_lifetime: cli.cert_lifetime,
        config_dir: cli.config_dir,
        limits: Limits {
            conns_per_addr: cli.max_conns_per_addr.max(1),
            request_timeout: cli.request_timeout,
            max_body: usize::try_from(cli.max_body).unwrap_or(usize::MAX),
            discoveries_per_minute: cli.discoveries_per_minute,
            max_discovered: cli.max_discovered,
        },
        retention: Retention {
            keep_boots: cli.keep_boots.max(1),
            max_log_bytes_per_boot: cli.max_log_per_boot,
            keep_history: cli.keep_history,
        },
        store: cli.store,
        ca_dir: cli.ca_dir,
        tftp_workers: cli.tftp_workers.max(1),
        tftp_sends: cli.tftp_sends.max(1),
        kubeconfig: cli.kubeconfig,
        bootstrap_token_ttl: cli.bootstrap_token_ttl,
        extensions_dir: cli.extensions_dir,
    };
    server::serve(cfg, |r| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "plinth-server listening on http://{}", r.http);
        let _ = writeln!(out, "plinth-server HTTPS on https://{}", r.https);
        let _ = writeln!(out, "plinth-server CA pin {}", r.pin);
        if let Some(s) = r.sntp {
            let _ = writeln!(out, "plinth-server SNTP on {s}");
        }
        if let Some(t) = r.tftp {
            let _ = writeln!(out, "plinth-server TFTP on {t}");
        }
        if let Some(p) = &r.operator_token {
            let _ = writeln!(
                out,
                "plinth-server first operator token written to {}",
                p.display()
            );
        }
        let _ = out.flush();
    })
    .context("plinth-server")
}
