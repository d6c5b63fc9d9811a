//! Logging: where the lines go and how they look (docs/OPERATIONS.md, "Logging").
//!
//! - `plain` (the default) or `json` (one JSON object a line: `timestamp`, `level`, `fields`,
//!   `target`).
//! - ANSI colour only when stderr is a terminal (and `NO_COLOR` is unset).
//! - Under systemd, when stderr is the journal (`JOURNAL_STREAM` names stderr's device and
//!   inode), every line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info,
//!   `<7>` debug and trace), which journald takes as the entry's priority and strips, and the
//!   timestamp is left to journald.
//! - The per-packet debug messages (the wg(4)-style lines of `-v`, from the protocol core's
//!   device: handshakes received, invalid packets, keepalives) are rate-limited to a number per
//!   second; what is suppressed is counted ([`suppressed`]: `log_messages_suppressed` in
//!   `wgpmd stats`, `wgpmd_log_messages_suppressed_total` on the metrics endpoint).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt};
use tracing_subscriber::fmt::format::{FmtSpan, Writer};
use tracing_subscriber::fmt::{self, FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Per-packet messages suppressed by the rate limit since the process started.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Per-packet messages suppressed by the rate limit since the process started.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// Per-packet messages logged per second when not told otherwise.
pub const DEFAULT_PACKET_RATE: u32 = 100;

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// How to log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Plain or JSON lines.
    pub format: LogFormat,
    /// `EnvFilter` directives when `RUST_LOG` is not set (e.g. `info` or `info,wgpmd=debug`).
    pub default_filter: String,
    /// Per-packet messages logged per second (0: none; suppressed ones are counted).
    pub packet_rate: u32,
}

/// Whether a message is one of the per-packet ones: a debug or trace event of the protocol
/// core's device (what a packet's arrival or departure logs).
pub fn is_per_packet(meta: &Metadata<'_>) -> bool {
    meta.is_event()
        && matches!(*meta.level(), Level::DEBUG | Level::TRACE)
        && meta.target().starts_with("wgpmd_proto::device")
}

/// At most `rate` per-packet messages per second (a window per whole second since start); the
/// rest are counted in [`suppressed`]. Other messages pass.
pub struct PacketRate {
    rate: u32,
    start: Instant,
    window: AtomicU64,
    count: AtomicU32,
}

impl PacketRate {
    /// A limit of `rate` messages per second.
    pub fn new(rate: u32) -> PacketRate {
        PacketRate { rate, start: Instant::now(), window: AtomicU64::new(0), count: AtomicU32::new(0) }
    }

    /// Whether one more per-packet message may be logged now (counts it if not).
    pub fn allow(&self) -> bool {
        self.allow_at(self.start.elapsed().as_secs())
    }

    fn allow_at(&self, second: u64) -> bool {
        let w = self.window.load(Ordering::Relaxed);
        if w != second && self.window.compare_exchange(w, second, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.rate {
            return true;
        }
        // Keep the count from wrapping under a long flood.
        self.count.store(self.rate, Ordering::Relaxed);
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        false
    }
}

impl<S> Filter<S> for PacketRate {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !is_per_packet(meta) || self.allow()
    }
    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Per-packet call sites are asked every time; the others never.
        if is_per_packet(meta) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

/// Prefixes each line with its syslog priority for journald (`<6>` info...).
struct Priority<F>(F);

/// The syslog priority journald reads from a `<N>` prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        write!(w, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, w, event)
    }
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` (set by systemd for a service
/// whose output goes to the journal) names stderr's device and inode.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    meta.dev() == dev && meta.ino() == ino
}

/// Install the global subscriber (once, at start).
pub fn init(opts: &LogOptions) {
    let journal = stderr_is_journal();
    let ansi = !journal && std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&opts.default_filter));
    // The level filter first: the rate limit sees only what would be logged.
    let filter = env.and(PacketRate::new(opts.packet_rate));
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;
    let layer: Boxed = match (opts.format, journal) {
        (LogFormat::Plain, false) => {
            fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(filter).boxed()
        }
        (LogFormat::Plain, true) => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(Priority(fmt::format().without_time()))
            .with_filter(filter)
            .boxed(),
        (LogFormat::Json, false) => {
            fmt::layer().json().with_span_events(FmtSpan::NONE).with_writer(std::io::stderr).with_filter(filter).boxed()
        }
        (LogFormat::Json, true) => fmt::layer()
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(Priority(fmt::format().json()))
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_rate_allows_rate_per_second_and_counts_the_rest() {
        let r = PacketRate::new(3);
        let before = suppressed();
        let first: Vec<bool> = (0..5).map(|_| r.allow_at(7)).collect();
        assert_eq!(first, [true, true, true, false, false]);
        // Other tests may log in parallel: at least our two.
        assert!(suppressed() - before >= 2);
        // A new second: a new allowance.
        let next: Vec<bool> = (0..4).map(|_| r.allow_at(8)).collect();
        assert_eq!(next, [true, true, true, false]);
        let none = PacketRate::new(0);
        assert!(!none.allow_at(1));
    }

    #[test]
    fn per_packet_messages_are_the_devices_debug_events() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;
        struct Cs;
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unimplemented!()
            }
        }
        static CS: Cs = Cs;
        let meta = |target: &'static str, level: Level, kind: Kind| {
            Metadata::new("e", target, level, None, None, None, FieldSet::new(&[], Identifier(&CS)), kind)
        };
        assert!(is_per_packet(&meta("wgpmd_proto::device::handshake", Level::DEBUG, Kind::EVENT)));
        assert!(is_per_packet(&meta("wgpmd_proto::device::data", Level::TRACE, Kind::EVENT)));
        assert!(!is_per_packet(&meta("wgpmd_proto::device::data", Level::INFO, Kind::EVENT)));
        assert!(!is_per_packet(&meta("wgpmd_proto::uapi::apply", Level::DEBUG, Kind::EVENT)));
        assert!(!is_per_packet(&meta("wgpmd::daemon", Level::WARN, Kind::EVENT)));
        assert!(!is_per_packet(&meta("wgpmd_proto::device::data", Level::DEBUG, Kind::SPAN)));
        assert_eq!(
            [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].map(syslog_priority),
            [3, 4, 6, 7, 7]
        );
    }
}
