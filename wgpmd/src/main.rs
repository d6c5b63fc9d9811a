//! `wgpmd`: the command line. `run` starts a concentrator, `stats` reads a running one's
//! counters.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use wgpmd::daemon::{self, cores, DaemonConfig, PollMode};

#[derive(Parser)]
#[command(name = "wgpmd", version, about = "Userspace WireGuard concentrator built as a poll-mode NIC driver")]
struct Cli {
    /// Log the wg(4) debug messages (handshakes, invalid packets, keepalives).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
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

#[derive(Subcommand)]
enum Cmd {
    /// Run a concentrator until SIGINT/SIGTERM.
    Run {
        /// Interface name: the UAPI socket is /var/run/wireguard/<NAME>.sock (`wg show NAME`).
        #[arg(long, default_value = "wg0")]
        name: String,
        /// wg.conf(5) file to apply at start (the format `wg setconf` reads).
        #[arg(long)]
        config: Option<PathBuf>,
        /// WAN port: af_packet:IFACE (or mem:NAME).
        #[arg(short = 'a', long = "port")]
        port: String,
        /// Inner port for decrypted traffic (default tun:<NAME>).
        #[arg(long)]
        inner: Option<String>,
        /// Our IPv4 address on the WAN, with its prefix (e.g. 192.0.2.1/24).
        #[arg(long)]
        address: String,
        /// Next hop for endpoints outside the WAN subnet.
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// Cores as an EAL list (0-3,6); the first runs the control plane.
        #[arg(short = 'l', long = "lcores", conflicts_with = "coremask")]
        lcores: Option<String>,
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
    },
    /// Print a running daemon's counters.
    Stats {
        /// Interface name.
        #[arg(default_value = "wg0")]
        name: String,
    },
}

fn parse_address(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, prefix) = s.split_once('/').ok_or_else(|| format!("--address `{s}`: expected ADDRESS/PREFIX, e.g. 192.0.2.1/24"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("--address `{s}`: `{ip}` is not an IPv4 address"))?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("--address `{s}`: `{prefix}` is not a prefix length 0-32"))?;
    Ok((ip, prefix))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "info",
        1 => "info,wgpmd=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)))
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
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
        Cmd::Run { name, config, port, inner, address, gateway, lcores, coremask, control_shares_core, poll, fanout, mtu } => {
            let fail = |msg: String| {
                eprintln!("wgpmd: {msg}");
                ExitCode::FAILURE
            };
            let (address, prefix) = match parse_address(&address) {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let cores = match (lcores, coremask) {
                (Some(l), _) => cores::parse_list(&l),
                (None, Some(c)) => cores::parse_mask(&c),
                (None, None) => Ok(vec![cores::available().first().copied().unwrap_or(0)]),
            };
            let cores = match cores {
                Ok(c) => c,
                Err(e) => return fail(e.to_string()),
            };
            if name.is_empty() || name.len() > 15 || name.contains('/') {
                return fail(format!("--name `{name}`: an interface name of 1-15 characters without `/`"));
            }
            let cfg = DaemonConfig {
                inner_port: inner.unwrap_or_else(|| format!("tun:{name}")),
                name,
                config,
                wan_port: port,
                address,
                prefix,
                gateway,
                cores,
                control_shares_core,
                poll: match poll {
                    Poll::Busy => PollMode::Busy,
                    Poll::Adaptive => PollMode::Adaptive,
                },
                fanout: match fanout {
                    FanoutArg::Hash => nic_backends::Fanout::Hash,
                    FanoutArg::Lb => nic_backends::Fanout::LoadBalance,
                },
                mtu,
                sockets: true,
            };
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
                    return fail(format!("installing a signal handler: {e}"));
                }
            }
            match daemon::run(cfg, stop) {
                Ok(()) => {
                    tracing::info!("stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.to_string()),
            }
        }
    }
}
