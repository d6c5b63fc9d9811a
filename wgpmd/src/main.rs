//! `wgpmd`: the command line. `run` starts a concentrator, `stats` reads a running one's
//! counters, `bench` measures the worker pipeline over in-memory ports, `status`/`bind`/`unbind`
//! hand a NIC to vfio-pci and back (the `vfio:BDF` port). The interface is named the same way
//! everywhere: the first positional argument (`wgpmd run wg0 ...`, `wgpmd stats wg0`), as `wg`
//! and wireguard-go name it.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use wgpmd::bench::{self, BenchOptions, Direction};
use wgpmd::daemon::{self, cores, DaemonConfig, PollMode};
use wgpmd::wan::WanAddr;

/// `wgpmd --version`: the version, then the port backends and the optional features built in.
fn long_version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let features: Vec<&str> = [
            (cfg!(feature = "dpdk"), "dpdk"),
            (cfg!(feature = "bench-boringtun"), "bench-boringtun"),
            (cfg!(feature = "bench-ipsec-mb"), "bench-ipsec-mb"),
            (cfg!(feature = "test-hooks"), "test-hooks"),
        ]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect();
        format!(
            "{}\nbackends: {}\nfeatures: {}",
            env!("CARGO_PKG_VERSION"),
            nic_backends::PORT_BACKENDS.join(", "),
            if features.is_empty() { "none".to_string() } else { features.join(", ") }
        )
    })
}

#[derive(Parser)]
#[command(
    name = "wgpmd",
    version,
    long_version = long_version(),
    about = "Userspace WireGuard concentrator built as a poll-mode NIC driver"
)]
struct Cli {
    /// Log the wg(4) debug messages (handshakes, invalid packets, keepalives).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log lines as plain text or as one JSON object each.
    #[arg(long, global = true, value_enum, default_value = "plain")]
    log_format: LogFormatArg,
    /// Per-packet debug messages (`-v`) logged per second at most; the rest are counted
    /// (`log_messages_suppressed`).
    #[arg(long, global = true, default_value_t = wgpmd::logging::DEFAULT_PACKET_RATE)]
    log_packet_rate: u32,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Plain,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Poll {
    Busy,
    Adaptive,
}

#[derive(Clone, Copy, ValueEnum)]
enum FanoutArg {
    /// Hash on the flow: one peer's packets stay on one worker (the default).
    Hash,
    /// Round-robin: spreads even one peer over every worker.
    Lb,
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    /// rx, then tx.
    Both,
    /// WAN to inner: the workers decrypt.
    Rx,
    /// Inner to WAN: the workers encrypt.
    Tx,
    /// Both at once (each chunk half rx, half tx).
    Duplex,
    /// rx, then tx, then both at once.
    All,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run a concentrator until SIGINT/SIGTERM (SIGHUP re-applies --config like `wg syncconf`).
    Run(Box<RunArgs>),
    /// Measure the full worker pipeline over mem ports with a built-in traffic generator,
    /// next to raw AEAD and boringtun timed in the same run.
    Bench {
        /// Simulated peers (default 16; 4 with --quick); several counts (`16,1000000`) are
        /// measured one after the other and compared. With --flood: one count.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<usize>,
        /// Inner packet sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "64,512,1420")]
        sizes: Vec<usize>,
        /// Timed seconds per measurement (default 3; 0.5 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Concentrator workers.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Which way to push packets through.
        #[arg(long, value_enum, default_value = "both")]
        direction: DirectionArg,
        /// Short run: 0.5 s per measurement, 4 peers.
        #[arg(long)]
        quick: bool,
        /// Decrypt and compare every n-th tx frame (rx packets are all compared).
        #[arg(long, default_value_t = 64)]
        verify_every: u64,
        /// Skip the raw AEAD and boringtun references.
        #[arg(long)]
        no_references: bool,
        /// Handshake flood instead (docs/PERFORMANCE.md): responder handshakes per worker core,
        /// established peers' data alone and under a flood, with 1 and 2 workers.
        #[arg(long)]
        flood: bool,
        /// With --flood: valid-MAC1 initiations per second (default 100000).
        #[arg(long, requires = "flood")]
        rate: Option<u64>,
    },
    /// Per-packet cost of the dpdk backend over raw rte_eth_rx_burst/tx_burst on a net_ring
    /// loopback vdev (build feature `dpdk`). EAL arguments after `--` (default:
    /// `--no-huge -m 128 --no-pci --vdev=net_ring0`).
    DpdkBench {
        /// Timed seconds per loop (default 2; 0.3 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Packets in flight.
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        /// Short run for CI.
        #[arg(long)]
        quick: bool,
        /// EAL arguments.
        #[arg(last = true, value_name = "EAL_ARGS")]
        eal: Vec<String>,
    },
    /// Print a running daemon's counters.
    Stats {
        /// Interface name.
        #[arg(value_name = "INTERFACE", default_value = "wg0")]
        name: String,
    },
    /// Write the man pages and the bash and zsh completions, generated from this command line,
    /// into a directory (packaging).
    #[command(hide = true)]
    Assets {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// List network PCI devices: vendor:device, driver, IOMMU group, interface, default route.
    Status {
        /// Root of sysfs/procfs (tests use a fake tree).
        #[arg(long, hide = true, default_value = "/")]
        sysfs_root: PathBuf,
    },
    /// Hand a NIC to vfio-pci for `--port vfio:BDF` (its kernel driver is remembered).
    Bind {
        /// PCI address, e.g. 0000:01:00.0 (see `wgpmd status`).
        bdf: String,
        /// Root of sysfs/procfs (tests use a fake tree).
        #[arg(long, hide = true, default_value = "/")]
        sysfs_root: PathBuf,
    },
    /// Give a NIC back to its kernel driver (the one it had before `bind`, or --driver).
    Unbind {
        /// PCI address.
        bdf: String,
        /// Kernel driver to bind to (default: the one `wgpmd bind` remembered).
        #[arg(long)]
        driver: Option<String>,
        /// Root of sysfs/procfs (tests use a fake tree).
        #[arg(long, hide = true, default_value = "/")]
        sysfs_root: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Interface name: the TUN (unless --inner), the UAPI socket /var/run/wireguard/<INTERFACE>.sock
    /// (`wg show INTERFACE`) and the counters socket (`wgpmd stats INTERFACE`).
    #[arg(value_name = "INTERFACE", conflicts_with = "name")]
    interface: Option<String>,
    /// The interface name's old spelling, `--name NAME` (hidden).
    #[arg(long, hide = true)]
    name: Option<String>,
    /// wg.conf(5) file to apply at start (the format `wg setconf` reads), and again on SIGHUP
    /// with `wg syncconf` semantics.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Parse and validate everything (configuration file, addresses, cores, port strings) without
    /// opening any port; exit 0 if it is all valid, 1 with the reason if not.
    #[arg(long)]
    check: bool,
    /// WAN port: af_packet:IFACE, af_xdp:IFACE (the kernel keeps the interface; --address is its own),
    /// vfio:BDF (a virtio-net NIC bound with `wgpmd bind`),
    /// dpdk:PORT_ID or dpdk:DEVICE_NAME (build feature `dpdk`; EAL arguments go after `--`), or mem:NAME.
    #[arg(long = "port", value_name = "PORT", required_unless_present = "port_short_a")]
    port: Option<String>,
    /// Deprecated `-a PORT` (EAL's `-a` is the PCI allow list): accepted with a warning.
    #[arg(short = 'a', hide = true, value_name = "PORT", conflicts_with = "port")]
    port_short_a: Option<String>,
    /// Inner port for decrypted traffic (default tun:<INTERFACE>), or vhost-user:PATH (wgpmd is
    /// the vhost-user backend of a VM or DPDK application; it creates the socket PATH and the
    /// frontend connects), or vhost-user:PATH,client (the frontend listens on PATH, e.g. QEMU
    /// `server=on` or testpmd `server=1`; wgpmd connects, retrying while it is absent).
    #[arg(long)]
    inner: Option<String>,
    /// WAN exception path: tap:NAME creates a kernel TAP with the WAN port's MAC and MTU.
    /// Every WAN frame wgpmd does not consume (to its MAC, broadcast or multicast) goes to
    /// the kernel there, and what the kernel sends there goes out of the WAN, so the host
    /// keeps the link for SSH, BGP, monitoring. Give the TAP the WAN address (`ip addr
    /// add`) to share it: wgpmd keeps answering ARP/ND and ping for that address and
    /// mirrors ARP/ND to the kernel (docs/OPERATIONS.md).
    #[arg(long, value_name = "tap:NAME")]
    exception: Option<String>,
    /// Most frames per second to the exception path (over all workers; more are counted
    /// and dropped).
    #[arg(long, default_value_t = wgpmd::daemon::exception::DEFAULT_RATE)]
    exception_rate: u64,
    /// Our address on the WAN, with its prefix (e.g. 192.0.2.1/24 or 2001:db8::1/64).
    /// Give it twice for both families (one IPv4, one IPv6).
    #[arg(long, required = true)]
    address: Vec<String>,
    /// Next hop for endpoints outside the WAN subnet; give it twice for an IPv4 and an
    /// IPv6 gateway.
    #[arg(long)]
    gateway: Vec<IpAddr>,
    /// 802.1Q VLAN of the WAN (1-4094): only frames tagged N are accepted, all sent
    /// frames carry the tag.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
    vlan: Option<u16>,
    /// Neighbour reachable time in ms (default 30000). For tests only (docs/OPERATIONS.md).
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    neigh_reachable_ms: Option<u64>,
    /// Most entries of the neighbour table (default 4096). For tests only
    /// (docs/OPERATIONS.md).
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    neigh_max_entries: Option<u64>,
    /// Cores as a list, as EAL's -l takes it (0-3,6); the first runs the control plane.
    // `--lcores`, the old spelling, is a hidden alias: EAL's --lcores is an lcore@cpu map.
    #[arg(short = 'l', long = "cores", alias = "lcores", value_name = "LIST", conflicts_with = "coremask")]
    cores: Option<String>,
    /// Cores as an EAL hexadecimal mask (0xf).
    #[arg(short = 'c', long = "coremask")]
    coremask: Option<String>,
    /// Run the control plane on the first worker's core (small machines).
    #[arg(long)]
    control_shares_core: bool,
    /// Worker polling: busy (dedicated cores) or adaptive (backs off when idle).
    #[arg(long, value_enum, default_value = "busy")]
    poll: Poll,
    /// How the WAN port spreads packets over workers.
    #[arg(long, value_enum, default_value = "hash")]
    fanout: FanoutArg,
    /// Tunnel MTU.
    #[arg(long, default_value_t = 1420)]
    mtu: usize,
    /// Serve OpenMetrics/Prometheus metrics on http://ADDR:PORT/metrics (off by default;
    /// docs/OPERATIONS.md "Metrics").
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<std::net::SocketAddr>,
    /// Export per-peer series (bytes, latest handshake) for at most N peers on the metrics
    /// endpoint (0: none).
    #[arg(long, value_name = "N", default_value_t = 0, requires = "metrics",
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    metrics_peers: u32,
    /// DPDK EAL arguments (only with a dpdk: port), after `--`: e.g.
    /// `-- --vdev=net_af_packet0,iface=eth1 --no-huge -m 256`. wgpmd adds
    /// `--lcores=0@(<its cores>)`, and `--file-prefix=wgpmd-<INTERFACE>` and
    /// `--proc-type=primary` unless given.
    #[arg(last = true, value_name = "EAL_ARGS")]
    eal: Vec<String>,
}

fn parse_address(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, prefix) =
        s.split_once('/').ok_or_else(|| format!("--address `{s}`: expected ADDRESS/PREFIX, e.g. 192.0.2.1/24"))?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("--address `{s}`: `{ip}` is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("--address `{s}`: `{prefix}` is not a prefix length 0-{max}"))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("--address `{s}`: not a unicast address"));
    }
    Ok((ip, prefix))
}

/// The WAN addressing from the repeated `--address` and `--gateway`: at most one of each
/// family, a gateway only for a family with an address. `None`: no address of that family.
#[allow(clippy::type_complexity)]
fn wan_addresses(
    addresses: &[String],
    gateways: &[IpAddr],
) -> Result<(Option<WanAddr<Ipv4Addr>>, Option<WanAddr<Ipv6Addr>>), String> {
    let (mut v4, mut v6) = (None, None);
    for a in addresses {
        match parse_address(a)? {
            (IpAddr::V4(ip), p) if v4.is_none() => v4 = Some((ip, p)),
            (IpAddr::V6(ip), p) if v6.is_none() => v6 = Some((ip, p)),
            _ => return Err(format!("--address `{a}`: at most one IPv4 and one IPv6 address")),
        }
    }
    let (mut g4, mut g6) = (None, None);
    for g in gateways {
        match *g {
            IpAddr::V4(ip) if g4.is_none() && v4.is_some() => g4 = Some(ip),
            IpAddr::V6(ip) if g6.is_none() && v6.is_some() => g6 = Some(ip),
            _ => return Err(format!("--gateway {g}: at most one per family, and only for a family with an --address")),
        }
    }
    Ok((
        v4.map(|(addr, prefix)| WanAddr { addr, prefix, gateway: g4 }),
        v6.map(|(addr, prefix)| WanAddr { addr, prefix, gateway: g6 }),
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.cmd, Cmd::Bench { .. } | Cmd::DpdkBench { .. });
    let filter = match cli.verbose {
        0 if quiet => "warn",
        0 => "info",
        1 => "info,wgpmd=debug,wgpmd_proto=debug",
        _ => "debug",
    };
    wgpmd::logging::init(&wgpmd::logging::LogOptions {
        format: match cli.log_format {
            LogFormatArg::Plain => wgpmd::logging::LogFormat::Plain,
            LogFormatArg::Json => wgpmd::logging::LogFormat::Json,
        },
        default_filter: filter.to_string(),
        packet_rate: cli.log_packet_rate,
    });
    match cli.cmd {
        Cmd::Bench { flood: true, peers, seconds, quick, rate, .. } => {
            if peers.len() > 1 {
                eprintln!("wgpmd: bench --flood takes one --peers count");
                return ExitCode::FAILURE;
            }
            flood_bench(peers.first().copied(), seconds, quick, rate)
        }
        Cmd::Bench { peers, sizes, seconds, workers, direction, quick, verify_every, no_references, .. } => {
            let base = if quick { BenchOptions::quick() } else { BenchOptions::full() };
            let opts = BenchOptions {
                peers: if peers.is_empty() { base.peers } else { peers },
                sizes,
                seconds: seconds.unwrap_or(base.seconds),
                workers,
                directions: match direction {
                    DirectionArg::Both => vec![Direction::Rx, Direction::Tx],
                    DirectionArg::Duplex => vec![Direction::Duplex],
                    DirectionArg::All => vec![Direction::Rx, Direction::Tx, Direction::Duplex],
                    DirectionArg::Rx => vec![Direction::Rx],
                    DirectionArg::Tx => vec![Direction::Tx],
                },
                verify_every,
                references: !no_references,
            };
            match bench::run(&opts) {
                Ok(report) => {
                    print!("{report}");
                    let bad: u64 = report
                        .results
                        .iter()
                        .flat_map(|r| {
                            r.measured().map(|(_, m)| m.lost + m.verify_failed + m.out_of_order).collect::<Vec<_>>()
                        })
                        .sum();
                    if bad > 0 {
                        eprintln!("wgpmd: {bad} packet(s) lost, damaged or out of order");
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wgpmd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status { sysfs_root } => {
            print!("{}", vfio::Sysfs::new(sysfs_root).status_text());
            ExitCode::SUCCESS
        }
        Cmd::Bind { bdf, sysfs_root } => report(vfio::Sysfs::new(sysfs_root).bind(&bdf)),
        Cmd::Unbind { bdf, driver, sysfs_root } => report(vfio::Sysfs::new(sysfs_root).unbind(&bdf, driver.as_deref())),
        Cmd::DpdkBench { seconds, in_flight, quick, eal } => {
            dpdk_bench(seconds.unwrap_or(if quick { 0.3 } else { 2.0 }), in_flight, eal)
        }
        Cmd::Stats { name } => match daemon::query_stats(&name) {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wgpmd: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run(args) => run(*args),
        Cmd::Assets { dir } => match assets(&dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wgpmd: {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// `wgpmd run`'s arguments, validated: everything that can be checked without opening a port.
struct Validated {
    cfg: DaemonConfig,
    /// The EAL argv (a dpdk: port), else empty.
    eal_args: Vec<String>,
    /// Whether the user gave EAL a --file-prefix.
    user_prefix: bool,
}

/// Check `wgpmd run`'s arguments: the interface name, addresses, cores (against this machine's),
/// port strings (syntax), EAL arguments, and the configuration file (read and parsed, endpoint
/// names resolved). Opens no port.
fn validate(a: RunArgs) -> Result<Validated, String> {
    let name = a.interface.or(a.name).unwrap_or_else(|| "wg0".into());
    if !wgpmd::uapi_server::valid_name(&name) {
        return Err(format!(
            "interface `{name}`: an interface name of 1-15 bytes without `/`, `:` or whitespace, not `.` or `..`"
        ));
    }
    let port = match (a.port, a.port_short_a) {
        (Some(p), _) => p,
        (None, Some(p)) => {
            tracing::warn!(
                "`-a {p}` is deprecated (in DPDK EAL, whose arguments follow `--`, -a is the PCI allow list): use --port {p}"
            );
            p
        }
        (None, None) => return Err("--port is required".into()),
    };
    let (wan_v4, wan_v6) = wan_addresses(&a.address, &a.gateway)?;
    let cores = match (a.cores, a.coremask) {
        (Some(l), _) => cores::parse_list(&l),
        (None, Some(c)) => cores::parse_mask(&c),
        (None, None) => Ok(vec![cores::available().first().copied().unwrap_or(0)]),
    }
    .map_err(|e| e.to_string())?;
    let layout = cores::layout(&cores, &cores::available(), a.control_shares_core).map_err(|e| e.to_string())?;
    let inner = a.inner.unwrap_or_else(|| format!("tun:{name}"));
    let queues = layout.workers.len();
    let fanout = match a.fanout {
        FanoutArg::Hash => nic_backends::Fanout::Hash,
        FanoutArg::Lb => nic_backends::Fanout::LoadBalance,
    };
    let wan_backend =
        nic_backends::check_spec(&port, &nic_backends::PortOptions { queues, fanout, mtu: None, mac: None })
            .map_err(|e| e.to_string())?;
    nic_backends::check_spec(&inner, &nic_backends::PortOptions { queues, fanout, mtu: Some(a.mtu), mac: None })
        .map_err(|e| e.to_string())?;
    let dpdk = wan_backend == "dpdk" || port.starts_with("dpdk:");
    if !a.eal.is_empty() && !dpdk {
        return Err(format!(
            "EAL arguments after `--` ({}) are for a dpdk: port, and --port is `{port}`",
            a.eal.join(" ")
        ));
    }
    let eal = if dpdk { eal_args(&name, &cores, &a.eal)? } else { Vec::new() };
    if let Some(path) = &a.config {
        daemon::load_config(path).map_err(|e| e.to_string())?;
    }
    Ok(Validated {
        cfg: DaemonConfig {
            inner_port: inner,
            name,
            config: a.config,
            inline_config: None,
            wan_port: port,
            wan_v4,
            wan_v6,
            vlan: a.vlan,
            neigh_reachable: a.neigh_reachable_ms.map(std::time::Duration::from_millis),
            neigh_max_entries: a.neigh_max_entries.map(|n| n as usize),
            cores,
            control_shares_core: a.control_shares_core,
            poll: match a.poll {
                Poll::Busy => PollMode::Busy,
                Poll::Adaptive => PollMode::Adaptive,
            },
            fanout,
            mtu: a.mtu,
            sockets: true,
            reload: None,
            drop_privileges: true,
            metrics: a.metrics.map(|addr| daemon::MetricsOptions { addr, peers: a.metrics_peers as usize }),
            exception: a.exception,
            exception_rate: a.exception_rate,
        },
        eal_args: eal,
        user_prefix: a.eal.iter().any(|e| e.starts_with("--file-prefix")),
    })
}

/// `wgpmd run`.
fn run(a: RunArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("wgpmd: {msg}");
        ExitCode::FAILURE
    };
    let check = a.check;
    let v = match validate(a) {
        Ok(v) => v,
        Err(e) if check => return fail(format!("check failed: {e}")),
        Err(e) => return fail(e),
    };
    let Validated { mut cfg, eal_args: eal, user_prefix } = v;
    if check {
        println!(
            "wgpmd: check passed: interface {}, WAN {}, inner {}, cores {:?}, configuration {} (no port opened)",
            cfg.name,
            cfg.wan_port,
            cfg.inner_port,
            cfg.cores,
            cfg.config.as_ref().map_or("none".to_string(), |p| p.display().to_string())
        );
        return ExitCode::SUCCESS;
    }
    daemon::install_panic_hook();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            return fail(format!("installing a signal handler: {e}"));
        }
    }
    // SIGHUP re-applies --config (and no longer kills the daemon).
    let reload = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone()) {
        return fail(format!("installing a signal handler: {e}"));
    }
    cfg.reload = Some(reload);
    let dpdk = !eal.is_empty();
    let eal_prefix = if dpdk { file_prefix(&eal) } else { String::new() };
    if dpdk {
        #[cfg(feature = "dpdk")]
        {
            tracing::info!("DPDK EAL arguments: {}", eal[1..].join(" "));
            if let Err(e) = nic_backends::dpdk::init_eal(&eal) {
                dpdk_leftovers(&eal_prefix, !user_prefix);
                return fail(e.to_string());
            }
        }
    }
    let result = daemon::run(cfg, stop);
    // Every port and pool is gone: free EAL's memory, then remove what DPDK 22.11 leaves
    // behind for our file prefix (see `dpdk_leftovers`).
    #[cfg(feature = "dpdk")]
    if dpdk {
        nic_backends::dpdk::cleanup_eal();
        dpdk_leftovers(&eal_prefix, !user_prefix);
    }
    let _ = (&eal_prefix, user_prefix);
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

/// `wgpmd assets DIR`: man pages (wgpmd.1 and one per visible subcommand, wgpmd-run.1...) and
/// the bash (`wgpmd.bash`) and zsh (`_wgpmd`) completions, generated from the clap definitions.
fn assets(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let cmd = Cli::command();
    let mut page = |cmd: clap::Command, file: String| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        let path = dir.join(file);
        std::fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    page(cmd.clone(), "wgpmd.1".into())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("wgpmd-{}", sub.get_name());
        let name: &'static str = Box::leak(name.into_boxed_str());
        page(sub.clone().name(name), format!("{name}.1"))?;
    }
    for (shell, file) in [(clap_complete::Shell::Bash, "wgpmd.bash"), (clap_complete::Shell::Zsh, "_wgpmd")] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "wgpmd", &mut out);
        let path = dir.join(file);
        std::fs::write(&path, out)?;
        written.push(path);
    }
    Ok(written)
}

/// The EAL argv for a dpdk: WAN: `wgpmd`, then what wgpmd sets unless the user gave it
/// (`--file-prefix=wgpmd-<name>` so two instances do not share /var/run/dpdk/<prefix>,
/// `--proc-type=primary`), `--lcores=0@(<wgpmd's cores>)` (EAL's main lcore 0 is the main
/// thread, which runs the control plane, allowed on all of wgpmd's cores so that wgpmd can pin
/// its threads itself; workers register with `rte_thread_register` and get further lcore ids),
/// then the user's arguments. Cores are wgpmd's (`-l`/`-c` before `--`): EAL core options
/// after `--` are refused.
fn eal_args(name: &str, cores: &[usize], user: &[String]) -> Result<Vec<String>, String> {
    let opt = |u: &String, o: &str| u == o || u.starts_with(&format!("{o}="));
    for u in user {
        for o in ["-l", "-c", "--lcores", "--main-lcore", "-s", "--service-coremask", "--service-corelist"] {
            if opt(u, o) || (o.len() == 2 && u.starts_with(o) && u.len() > 2 && !u.starts_with("--")) {
                return Err(format!(
                    "EAL argument `{u}`: give wgpmd's cores with -l/--cores or -c before `--` (wgpmd passes EAL the control core itself)"
                ));
            }
        }
    }
    let mut args = vec!["wgpmd".to_string()];
    if !user.iter().any(|u| opt(u, "--file-prefix")) {
        args.push(format!("--file-prefix=wgpmd-{name}"));
    }
    if !user.iter().any(|u| opt(u, "--proc-type")) {
        args.push("--proc-type=primary".into());
    }
    let set: Vec<String> = cores.iter().map(usize::to_string).collect();
    args.push(format!("--lcores=0@({})", set.join(",")));
    args.extend(user.iter().cloned());
    Ok(args)
}

fn flood_bench(peers: Option<usize>, seconds: Option<f64>, quick: bool, rate: Option<u64>) -> ExitCode {
    let base = if quick { bench::flood::FloodOptions::quick() } else { bench::flood::FloodOptions::full() };
    let opts = bench::flood::FloodOptions {
        peers: peers.unwrap_or(base.peers),
        seconds: seconds.unwrap_or(base.seconds),
        rate: rate.unwrap_or(base.rate),
        ..base
    };
    match bench::flood::run(&opts) {
        Ok(report) => {
            print!("{report}");
            if report.broken().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wgpmd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "dpdk")]
fn dpdk_bench(seconds: f64, in_flight: usize, eal: Vec<String>) -> ExitCode {
    let user = if eal.is_empty() {
        ["--no-huge", "-m", "128", "--no-pci", "--no-telemetry", "--vdev=net_ring0"].map(String::from).to_vec()
    } else {
        eal
    };
    let core = cores::available().first().copied().unwrap_or(0);
    let args = match eal_args(&format!("bench{}", std::process::id()), &[core], &user) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wgpmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let prefix = file_prefix(&args);
    let r = nic_backends::dpdk::init_eal(&args)
        .and_then(|()| nic_backends::dpdk::bench_ring("net_ring0", in_flight, seconds));
    nic_backends::dpdk::cleanup_eal();
    dpdk_leftovers(&prefix, !user.iter().any(|a| a.starts_with("--file-prefix")));
    match r {
        Ok(b) => {
            print!("{b}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgpmd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "dpdk"))]
fn dpdk_bench(_: f64, _: usize, _: Vec<String>) -> ExitCode {
    eprintln!("wgpmd: dpdk-bench: this binary is built without DPDK: rebuild with --features dpdk");
    ExitCode::FAILURE
}

/// The `--file-prefix` in an EAL argv (EAL's default is `rte`).
fn file_prefix(args: &[String]) -> String {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--file-prefix=") {
            return v.to_string();
        }
        if a == "--file-prefix" {
            return it.next().cloned().unwrap_or_default();
        }
    }
    "rte".into()
}

/// After `rte_eal_cleanup`: DPDK 22.11 never frees ethdev's shared port data, so one hugepage
/// map file (`<prefix>map_0`) stays in the hugetlbfs mount and keeps its page reserved. The
/// process is done with DPDK: remove `<prefix>map_*` from every hugetlbfs mount, and the
/// runtime directory /var/run/dpdk/<prefix> when the prefix was wgpmd's own choice.
#[cfg(feature = "dpdk")]
fn dpdk_leftovers(prefix: &str, own_prefix: bool) {
    if prefix.is_empty() {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for dir in mounts.lines().filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "hugetlbfs").then(|| f[1].replace("\\040", " "))
    }) {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.strip_prefix(prefix).is_some_and(|r| r.starts_with("map_")) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if own_prefix {
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    }
}

/// A devbind command's outcome: its message on stdout, or the error on stderr and a failure status.
fn report(r: Result<String, vfio::VfioError>) -> ExitCode {
    match r {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgpmd: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_file_prefix() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(file_prefix(&s(&["wgpmd", "--file-prefix=a"])), "a");
        assert_eq!(file_prefix(&s(&["wgpmd", "--file-prefix", "b", "-l", "0"])), "b");
        assert_eq!(file_prefix(&s(&["wgpmd", "-l", "0"])), "rte");
    }

    #[test]
    fn eal_arguments_wgpmd_adds_and_refuses() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            eal_args("wg0", &[2], &s(&["--no-huge", "--vdev=net_null0"])).unwrap(),
            s(&[
                "wgpmd",
                "--file-prefix=wgpmd-wg0",
                "--proc-type=primary",
                "--lcores=0@(2)",
                "--no-huge",
                "--vdev=net_null0"
            ])
        );
        assert_eq!(
            eal_args("wg0", &[0, 1, 3], &s(&["--file-prefix", "x", "--proc-type=auto"])).unwrap(),
            s(&["wgpmd", "--lcores=0@(0,1,3)", "--file-prefix", "x", "--proc-type=auto"])
        );
        for bad in ["-l", "-l0-1", "-c", "--lcores=0@1", "--main-lcore"] {
            let e = eal_args("wg0", &[0], &s(&[bad, "1"])).unwrap_err();
            assert!(e.contains("give wgpmd's cores"), "{bad}: {e}");
        }
        assert!(eal_args("wg0", &[0], &s(&["--log-level=lib.eal:debug"])).is_ok());
    }

    #[test]
    fn wan_addresses_one_per_family() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let (v4, v6) = wan_addresses(&s(&["192.0.2.1/24"]), &["192.0.2.254".parse().unwrap()]).unwrap();
        let gw = Some(Ipv4Addr::new(192, 0, 2, 254));
        assert_eq!((v4, v6), (Some(WanAddr { addr: Ipv4Addr::new(192, 0, 2, 1), prefix: 24, gateway: gw }), None));
        let (v4, v6) = wan_addresses(&s(&["2001:db8::1/64"]), &["2001:db8::ff".parse().unwrap()]).unwrap();
        assert_eq!(v4, None, "no IPv4 address");
        let want = WanAddr {
            addr: "2001:db8::1".parse().unwrap(),
            prefix: 64,
            gateway: Some("2001:db8::ff".parse().unwrap()),
        };
        assert_eq!(v6, Some(want));
        let (v4, v6) = wan_addresses(&s(&["2001:db8::1/64", "10.0.0.1/8"]), &[]).unwrap();
        assert_eq!(
            (v4.map(|a| (a.addr, a.prefix, a.gateway)), v6.map(|a| a.prefix)),
            (Some((Ipv4Addr::new(10, 0, 0, 1), 8, None)), Some(64))
        );
        assert!(wan_addresses(&s(&["10.0.0.1/8", "10.0.0.2/8"]), &[]).is_err());
        assert!(
            wan_addresses(&s(&["10.0.0.1/8"]), &["2001:db8::ff".parse().unwrap()]).is_err(),
            "IPv6 gateway without an IPv6 address"
        );
        assert!(wan_addresses(&s(&["2001:db8::1/129"]), &[]).is_err());
        assert!(wan_addresses(&s(&["10.0.0.1/33"]), &[]).is_err());
        assert!(wan_addresses(&s(&["ff02::1/64"]), &[]).is_err());
        assert!(wan_addresses(&s(&["0.0.0.0/0"]), &[]).is_err(), "no sentinel: 0.0.0.0 is not an address");
    }
}
