//! Traffic helpers: ping and iperf3 between namespaces.

use crate::netns::Netns;
use crate::proc::Proc;
use crate::util::{next_id, secs, wait_until};
use anyhow::{bail, Context, Result};
use std::fmt::Display;
use std::time::{Duration, Instant};

/// The summary of one `ping -c N` run.
#[derive(Clone, Debug, PartialEq)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
    /// As ping prints it (0.0 ..= 100.0).
    pub loss_percent: f64,
    /// None when nothing came back.
    pub rtt_avg_ms: Option<f64>,
}

impl PingStats {
    /// Parses iputils ping output ("5 packets transmitted, 5 received, 0% packet loss, ...",
    /// "rtt min/avg/max/mdev = 0.036/0.045/0.052/0.007 ms").
    pub fn parse(text: &str) -> Result<PingStats> {
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .with_context(|| format!("no summary in ping output: {text:?}"))?;
        let num_before = |word: &str| -> Result<f64> {
            let part =
                line.split(',').find(|p| p.contains(word)).with_context(|| format!("no {word:?} in {line:?}"))?;
            let tok = part.split_whitespace().next().unwrap_or("");
            tok.trim_end_matches('%').parse::<f64>().with_context(|| format!("{word:?} in {line:?}"))
        };
        let transmitted = num_before("transmitted")? as u32;
        let received = num_before("received")? as u32;
        let loss_percent = num_before("packet loss")?;
        let rtt_avg_ms = text
            .lines()
            .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
            .and_then(|l| l.split('=').nth(1))
            .and_then(|v| v.trim().split('/').nth(1))
            .and_then(|v| v.parse().ok());
        Ok(PingStats { transmitted, received, loss_percent, rtt_avg_ms })
    }
}

/// `ping -c count` from inside `ns` (interval 0.2 s, replies awaited up to 5 s). Returns the
/// statistics also when packets were lost; fails only if ping produced no summary.
pub fn ping(ns: &Netns, addr: impl Display, count: u32) -> Result<PingStats> {
    let addr = addr.to_string();
    let count_s = count.to_string();
    let out = ns.exec_timeout(
        &["ping", "-n", "-c", &count_s, "-i", "0.2", "-W", "5", &addr],
        secs(30) + Duration::from_millis(200 * count as u64),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    PingStats::parse(&text)
        .with_context(|| format!("ping {addr} in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

/// Like [`ping`], but requires every one of the `count` echo requests to be answered, and
/// tells a late reply from a lost one. iputils ping, once it has a reply, waits only
/// max(2 x the largest RTT, the interval) after its last request, so on a loaded machine a
/// reply that took a few hundred milliseconds shows as lost. The namespace's kernel counts
/// every echo reply that reaches it (`Icmp: InEchoReps` in /proc/net/snmp), also after ping
/// has exited: when ping reports fewer replies than requests, this waits up to 10 s (scaled)
/// for that counter to show all of them, and fails only if they never come.
pub fn ping_replied(ns: &Netns, addr: impl Display, count: u32) -> Result<PingStats> {
    let addr = addr.to_string();
    let reps0 = ns.snmp_counter("Icmp", "InEchoReps")?;
    let st = ping(ns, &addr, count)?;
    if st.transmitted != count {
        bail!("ping {addr} from {ns}: sent {} of {count} requests: {st:?}", st.transmitted);
    }
    if st.received == count {
        return Ok(st);
    }
    let mut got = 0;
    wait_until(&format!("{count} echo replies from {addr} in {ns} (ping saw {st:?})"), secs(10), || {
        got = ns.snmp_counter("Icmp", "InEchoReps")? - reps0;
        Ok((got >= count as u64).then_some(()))
    })
    .with_context(|| format!("the kernel of {ns} received {got} echo replies"))?;
    eprintln!("[e2e] ping {addr} from {ns}: ping saw {} of {count} replies, the rest came late", st.received);
    Ok(PingStats { received: count, loss_percent: 0.0, ..st })
}

/// Pings `addr` from `ns` one request at a time until `count` echo replies came back (counted
/// by the namespace's kernel, `Icmp: InEchoReps`, so a late reply counts), sending at most
/// `max_requests`; fails if fewer than `count` came. For a path that TCP traffic running at the
/// same moment keeps saturated: its congestion drops at the bottleneck can take an echo request
/// or reply as well, which [`ping_replied`] (every request answered) would call a failure. The
/// counter is the namespace's: any echo reply reaching it counts (a caller pinging one address
/// at a time, as here, sees only its own).
pub fn ping_replies_within(ns: &Netns, addr: impl Display, count: u32, max_requests: u32) -> Result<u32> {
    let addr = addr.to_string();
    let reps0 = ns.snmp_counter("Icmp", "InEchoReps")?;
    let mut sent = 0;
    while sent < max_requests {
        ping(ns, &addr, 1)?;
        sent += 1;
        if ns.snmp_counter("Icmp", "InEchoReps")? - reps0 >= u64::from(count) {
            return Ok(sent);
        }
    }
    let mut got = 0;
    wait_until(&format!("{count} echo replies from {addr} in {ns} ({sent} requests)"), secs(5), || {
        got = ns.snmp_counter("Icmp", "InEchoReps")? - reps0;
        Ok((got >= u64::from(count)).then_some(()))
    })
    .with_context(|| format!("the kernel of {ns} received {got} echo replies to {sent} requests"))?;
    Ok(sent)
}

/// Pings `addr` from `ns` once a second (one packet each) until a reply comes back, and returns
/// how long that took. Use it to wait for a tunnel (the first packet triggers the handshake).
pub fn wait_for_ping(ns: &Netns, addr: impl Display, timeout: Duration) -> Result<Duration> {
    let addr = addr.to_string();
    let t0 = Instant::now();
    wait_until(&format!("a ping reply from {addr} in {ns}"), timeout, || {
        let out = ns.exec_timeout(&["ping", "-n", "-c", "1", "-W", "1", &addr], secs(30))?;
        Ok(out.status.success().then_some(()))
    })?;
    Ok(t0.elapsed())
}

/// The result of one iperf3 TCP run, from the client's `-J` JSON.
#[derive(Clone, Debug)]
pub struct IperfReport {
    /// Receiver side throughput (`end.sum_received.bits_per_second`).
    pub bits_per_second: f64,
    /// Bytes received (`end.sum_received.bytes`).
    pub bytes: u64,
    /// Sender retransmissions (`end.sum_sent.retransmits`), when reported.
    pub retransmits: Option<u64>,
    pub seconds: f64,
}

/// iperf3 TCP for `secs` seconds: a one-shot server (`iperf3 -s -1 -B server_addr`) in
/// `server_ns`, a client in `client_ns`; `reverse` (-R) makes the server send. Returns the
/// receiver's bits per second.
pub fn iperf3(
    client_ns: &Netns,
    server_ns: &Netns,
    server_addr: impl Display,
    secs: u32,
    reverse: bool,
) -> Result<f64> {
    Ok(iperf3_report(client_ns, server_ns, server_addr, secs, reverse)?.bits_per_second)
}

/// [`iperf3`] with the whole report.
pub fn iperf3_report(
    client_ns: &Netns,
    server_ns: &Netns,
    server_addr: impl Display,
    duration_secs: u32,
    reverse: bool,
) -> Result<IperfReport> {
    const PORT: &str = "5201";
    let addr = server_addr.to_string();
    let log = std::env::temp_dir().join(format!("wgpmd-e2e-iperf3-server-{}-{}.log", std::process::id(), next_id()));
    let mut server =
        Proc::spawn_logged(server_ns, "iperf3-server", &["iperf3", "-s", "-1", "-B", &addr, "-p", PORT], &[], &log)?;
    let result = (|| -> Result<IperfReport> {
        wait_until(&format!("iperf3 server listening on {addr}:{PORT} in {server_ns}"), secs(30), || {
            server.ensure_running()?;
            let out = server_ns.run(&["ss", "-H", "-l", "-t", "-n", &format!("sport = :{PORT}")])?;
            Ok((!out.trim().is_empty()).then_some(()))
        })?;
        let t = duration_secs.to_string();
        let mut args = vec!["iperf3", "-c", &addr, "-p", PORT, "-t", &t, "-J", "--connect-timeout", "10000"];
        if reverse {
            args.push("-R");
        }
        let out = client_ns.exec_timeout(&args, secs(60) + Duration::from_secs(duration_secs as u64))?;
        let report = parse_iperf3_json(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
            format!("iperf3 client in {client_ns}: {}", String::from_utf8_lossy(&out.stderr).trim())
        })?;
        // The one-shot server exits by itself after the test.
        let _ = server.wait_timeout(secs(10));
        Ok(report)
    })();
    server.stop();
    match result {
        Ok(r) => {
            let _ = std::fs::remove_file(&log);
            Ok(r)
        }
        Err(e) => {
            Err(e.context(format!("iperf3 server log ({}):\n{}", log.display(), crate::util::tail_file(&log, 20))))
        }
    }
}

/// Parses iperf3's `-J` output of a TCP test.
pub(crate) fn parse_iperf3_json(text: &str) -> Result<IperfReport> {
    let v: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("iperf3 output is not JSON: {text:.300}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    let recv = &v["end"]["sum_received"];
    let bits_per_second =
        recv["bits_per_second"].as_f64().context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    Ok(IperfReport {
        bits_per_second,
        bytes: recv["bytes"].as_u64().unwrap_or(0),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
        seconds: recv["seconds"].as_f64().unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summaries() {
        let ok = "PING 10.100.0.2 (10.100.0.2) 56(84) bytes of data.\n\
                  64 bytes from 10.100.0.2: icmp_seq=1 ttl=64 time=0.4 ms\n\n\
                  --- 10.100.0.2 ping statistics ---\n\
                  5 packets transmitted, 5 received, 0% packet loss, time 803ms\n\
                  rtt min/avg/max/mdev = 0.036/0.045/0.052/0.007 ms\n";
        let s = PingStats::parse(ok).unwrap();
        assert_eq!((s.transmitted, s.received, s.loss_percent), (5, 5, 0.0));
        assert_eq!(s.rtt_avg_ms, Some(0.045));

        let lossy = "--- x ping statistics ---\n\
                     4 packets transmitted, 0 received, +4 errors, 100% packet loss, time 3055ms\n";
        let s = PingStats::parse(lossy).unwrap();
        assert_eq!((s.transmitted, s.received, s.loss_percent, s.rtt_avg_ms), (4, 0, 100.0, None));

        let partial = "3 packets transmitted, 2 received, 33.3333% packet loss, time 400ms\n";
        assert!((PingStats::parse(partial).unwrap().loss_percent - 33.3333).abs() < 1e-9);
        assert!(PingStats::parse("ping: connect: Network is unreachable\n").is_err());
    }

    #[test]
    fn parses_iperf3_json() {
        let j = r#"{"start":{},"intervals":[],"end":{"sum_sent":{"bytes":1000,"retransmits":7},
                   "sum_received":{"seconds":3.0,"bytes":990,"bits_per_second":2640.0}}}"#;
        let r = parse_iperf3_json(j).unwrap();
        assert_eq!((r.bits_per_second, r.bytes, r.retransmits), (2640.0, 990, Some(7)));
        let e = parse_iperf3_json(r#"{"start":{},"end":{},"error":"unable to connect to server"}"#);
        assert!(e.unwrap_err().to_string().contains("unable to connect"));
    }
}
