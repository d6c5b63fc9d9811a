use super::*;
use crate::daemon::handshakes::HsTimes;

/// Two workers with distinct counters, the control core, two exported peers.
fn sample() -> Snapshot {
    let mut w0 = Local { wan_rx: 11, data_rx: 5, ..Local::default() };
    w0.device.drop(DropReason::InvalidMac1);
    w0.device.drop(DropReason::InvalidMac1);
    w0.wan_drops[WanDrop::NotForUs as usize] = 3;
    w0.hs.dropped[HsDrop::QueueFull as usize] = 4;
    w0.wan_queue.rx_bytes = 1000;
    w0.inner_queue.tx_packets = 9;
    let mut times = HsTimes::default();
    for ns in [5_000, 40_000, 40_000, 200_000, 50_000_000] {
        times.observe(ns);
    }
    w0.hs.times = times;
    let mut w1 = Local { wan_rx: 7, staged_dropped_cap: 2, ..Local::default() };
    w1.wan_queue.iova_refused = 1;
    w1.exc_rate_dropped = 11;
    let mut control = Stats { initiations_sent: 6, ..Stats::default() };
    control.drop(DropReason::NoEndpoint);
    Snapshot {
        interface: "wg0".into(),
        version: "9.9.9",
        backends: vec!["af_packet", "tun"],
        uptime_seconds: 12.5,
        start_time_seconds: 1.7e9,
        workers: vec![w0, w1],
        hs_depth: vec![3, 0],
        hs_capacity: 512,
        control,
        tx_jobs_dropped: 8,
        peers: 100,
        peers_with_session: 42,
        wheel_entries: 99,
        staged_packets: 17,
        neigh: NeighStats { entries: 5, ..NeighStats::default() },
        wan_link_up: true,
        wan_extra: vec![("dpdk_rx_good_packets".into(), 77)],
        inner_extra: vec![("vhost_user_rx_packets".into(), 5)],
        exception: vec![("tap_tx", 9)],
        log_suppressed: 13,
        peer_series: vec![
            PeerSeries { public_key: "AAAA+/==".into(), rx_bytes: 1, tx_bytes: 2, latest_handshake: 1.75e9 },
            PeerSeries { public_key: "BBBB".into(), rx_bytes: 3, tx_bytes: 4, latest_handshake: 0.0 },
        ],
        peers_omitted: 98,
        ..Snapshot::default()
    }
}

/// Every sample line of a rendered page: (name, labels as written, value).
fn samples(page: &str) -> Vec<(String, String, String)> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (name.to_string(), labels.to_string(), value.to_string())
        })
        .collect()
}

/// The names a Prometheus server stores from a page (`_total`, `_bucket`, `_info`... included).
pub(super) fn exported_names(page: &str) -> std::collections::BTreeSet<String> {
    samples(page).into_iter().map(|(n, _, _)| n).collect()
}

fn value(page: &str, name: &str, labels: &str) -> String {
    samples(page)
        .into_iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in\n{page}"))
}

#[test]
fn per_worker_counters_carry_a_worker_label() {
    let page = render(sample(), true);
    assert_eq!(value(&page, "wgpmd_wan_frames_received_total", "worker=\"0\""), "11");
    assert_eq!(value(&page, "wgpmd_wan_frames_received_total", "worker=\"1\""), "7");
    assert_eq!(value(&page, "wgpmd_data_packets_decrypted_total", "worker=\"0\""), "5");
    assert_eq!(value(&page, "wgpmd_initiations_sent_total", "worker=\"control\""), "6");
    assert_eq!(value(&page, "wgpmd_port_bytes_received_total", "port=\"wan\",queue=\"0\""), "1000");
    assert_eq!(value(&page, "wgpmd_port_packets_sent_total", "port=\"inner\",queue=\"0\""), "9");
    assert_eq!(value(&page, "wgpmd_port_errors_total", "port=\"wan\",queue=\"1\",kind=\"iova_refused\""), "1");
    assert!(page.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // No per-worker names.
    assert!(!page.contains("worker0") && !page.contains("worker1"));
}

#[test]
fn every_drop_reason_is_a_label_value_of_its_family() {
    let page = render(sample(), true);
    for w in ["0", "1", "control"] {
        for r in DropReason::ALL {
            value(
                &page,
                "wgpmd_packet_drops_total",
                &format!("worker=\"{w}\",reason=\"{}\"", snake(&format!("{r:?}"))),
            );
        }
    }
    for w in ["0", "1"] {
        for r in WanDrop::ALL {
            value(&page, "wgpmd_wan_drops_total", &format!("worker=\"{w}\",reason=\"{}\"", snake(&format!("{r:?}"))));
        }
        for r in HsDrop::ALL {
            value(&page, "wgpmd_handshake_drops_total", &format!("worker=\"{w}\",reason=\"{}\"", r.name()));
        }
        for (r, _) in DATAPATH_DROPS {
            value(&page, "wgpmd_datapath_drops_total", &format!("worker=\"{w}\",reason=\"{r}\""));
        }
    }
    assert_eq!(value(&page, "wgpmd_packet_drops_total", "worker=\"0\",reason=\"invalid_mac1\""), "2");
    assert_eq!(value(&page, "wgpmd_packet_drops_total", "worker=\"control\",reason=\"no_endpoint\""), "1");
    assert_eq!(value(&page, "wgpmd_wan_drops_total", "worker=\"0\",reason=\"not_for_us\""), "3");
    assert_eq!(value(&page, "wgpmd_handshake_drops_total", "worker=\"0\",reason=\"queue_full\""), "4");
    assert_eq!(value(&page, "wgpmd_datapath_drops_total", "worker=\"1\",reason=\"staged_pool_cap\""), "2");
    assert_eq!(value(&page, "wgpmd_datapath_drops_total", "worker=\"control\",reason=\"tx_jobs_full\""), "8");
}

#[test]
fn gauges_build_info_uptime_and_peers() {
    let page = render(sample(), true);
    assert_eq!(value(&page, "wgpmd_peers", ""), "100.0");
    assert_eq!(value(&page, "wgpmd_peers_with_session", ""), "42.0");
    assert_eq!(value(&page, "wgpmd_wheel_entries", ""), "99.0");
    assert_eq!(value(&page, "wgpmd_staged_packets", ""), "17.0");
    assert_eq!(value(&page, "wgpmd_neighbour_entries", ""), "5.0");
    assert_eq!(value(&page, "wgpmd_handshake_queue_depth", "worker=\"0\""), "3.0");
    assert_eq!(value(&page, "wgpmd_handshake_queue_capacity", "worker=\"1\""), "512.0");
    assert_eq!(value(&page, "wgpmd_wan_link_up", ""), "1.0");
    assert_eq!(value(&page, "wgpmd_uptime_seconds", ""), "12.5");
    assert_eq!(value(&page, "wgpmd_build_info", "version=\"9.9.9\",backends=\"af_packet,tun\""), "1");
    assert!(page.contains("# TYPE wgpmd_build info\n"), "{page}");
    assert_eq!(value(&page, "wgpmd_log_messages_suppressed_total", ""), "13");
    assert_eq!(value(&page, "wgpmd_wan_backend_stat", "name=\"dpdk_rx_good_packets\""), "77.0");
    assert_eq!(value(&page, "wgpmd_inner_backend_stat", "name=\"vhost_user_rx_packets\""), "5.0");
    assert_eq!(value(&page, "wgpmd_exception_stat", "name=\"tap_tx\""), "9.0");
    assert_eq!(value(&page, "wgpmd_exception_frames_total", "worker=\"1\",kind=\"rate_dropped\""), "11");
    assert_eq!(value(&page, "wgpmd_exception_frames_total", "worker=\"0\",kind=\"to_kernel\""), "0");
    assert_eq!(value(&page, "wgpmd_metrics_peers_omitted", ""), "98.0");
    assert_eq!(value(&page, "wireguard_received_bytes_total", "interface=\"wg0\",public_key=\"AAAA+/==\""), "1");
    assert_eq!(value(&page, "wireguard_sent_bytes_total", "interface=\"wg0\",public_key=\"BBBB\""), "4");
    assert_eq!(
        value(&page, "wireguard_latest_handshake_seconds", "interface=\"wg0\",public_key=\"AAAA+/==\""),
        "1750000000.0"
    );
}

#[test]
fn the_handshake_histogram_is_cumulative_per_worker() {
    let page = render(sample(), true);
    let b = |le: &str| value(&page, "wgpmd_handshake_processing_seconds_bucket", &format!("le=\"{le}\",worker=\"0\""));
    // 5 µs, 40 µs twice, 200 µs, 50 ms.
    assert_eq!(b("0.00001"), "1");
    assert_eq!(b("0.000025"), "1");
    assert_eq!(b("0.00005"), "3");
    assert_eq!(b("0.0001"), "3");
    assert_eq!(b("0.00025"), "4");
    assert_eq!(b("0.01"), "4");
    assert_eq!(b("+Inf"), "5");
    assert_eq!(value(&page, "wgpmd_handshake_processing_seconds_count", "worker=\"0\""), "5");
    let sum: f64 = value(&page, "wgpmd_handshake_processing_seconds_sum", "worker=\"0\"").parse().unwrap();
    assert!((sum - 0.050285).abs() < 1e-9, "sum {sum}");
    assert_eq!(value(&page, "wgpmd_handshake_processing_seconds_count", "worker=\"1\""), "0");
}

#[test]
fn the_prometheus_text_format_has_the_same_series() {
    let om = render(sample(), true);
    let text = render(sample(), false);
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE wgpmd_build_info gauge\n"), "info as a gauge in the 0.0.4 format");
    assert_eq!(exported_names(&om), exported_names(&text));
    assert_eq!(value(&text, "wgpmd_wan_frames_received_total", "worker=\"1\""), "7");
}

#[test]
fn snake_case_reason_names() {
    assert_eq!(snake("InvalidMac1"), "invalid_mac1");
    assert_eq!(snake("NotForUs"), "not_for_us");
    assert_eq!(snake("Ipv4"), "ipv4");
    assert_eq!(snake("Icmpv6"), "icmpv6");
}

/// Metric names (`wgpmd_*`, `wireguard_*`) in every string of a Grafana dashboard.
pub(super) fn dashboard_metric_names(dashboard: &serde_json::Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(i) = ["wgpmd_", "wireguard_"].iter().filter_map(|p| rest.find(p)).min() {
                    // Only whole identifiers (not the tail of another word).
                    let before = rest[..i].chars().next_back();
                    let name: String =
                        rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
                    if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                        out.insert(name.clone());
                    }
                    rest = &rest[i + name.len()..];
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(dashboard, &mut out);
    out
}

/// The names a dashboard uses that the endpoint does not export.
fn unknown_names(dashboard: &serde_json::Value, page: &str) -> Vec<String> {
    let exported = exported_names(page);
    dashboard_metric_names(dashboard).into_iter().filter(|n| !exported.contains(n)).collect()
}

#[test]
fn the_grafana_dashboard_uses_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/wgpmd.json");
    let text = std::fs::read_to_string(path).expect("docs/grafana/wgpmd.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(dashboard.get("panels").and_then(|p| p.as_array()).is_some_and(|p| p.len() >= 8), "panels");
    let used = dashboard_metric_names(&dashboard);
    assert!(used.len() >= 15, "the dashboard uses {} metric names: {used:?}", used.len());
    let page = render(sample(), true);
    assert_eq!(unknown_names(&dashboard, &page), Vec::<String>::new(), "names the endpoint does not export");
    // The check catches a name that is not exported (and one without its `_total`).
    let bad = serde_json::json!({"panels": [{"targets": [
        {"expr": "sum(rate(wgpmd_no_such_metric_total[5m]))"},
        {"expr": "rate(wgpmd_wan_frames_received[1m]) + wgpmd_peers"}
    ]}]});
    assert_eq!(unknown_names(&bad, &page), ["wgpmd_no_such_metric_total", "wgpmd_wan_frames_received"]);
}

#[test]
fn the_build_info_names_the_compiled_in_backends() {
    let b = backends();
    for always in ["af_packet", "af_xdp", "tun", "tap", "vhost-user", "mem", "vfio"] {
        assert!(b.contains(&always), "{b:?}");
    }
    assert_eq!(b.contains(&"dpdk"), cfg!(feature = "dpdk"), "{b:?}");
}

#[test]
fn the_census_walks_every_peer_in_chunks() {
    use rand_core::OsRng;
    use wgpmd_proto::device::Device;
    let mut dev = Device::new(&mut OsRng, 0);
    // More than two chunks, with holes: every third peer removed.
    let n = 2 * CENSUS_CHUNK as usize + 1000;
    let ids: Vec<_> = (0..n)
        .map(|i| {
            let mut key = [7u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            dev.add_peer(&mut OsRng, key).unwrap()
        })
        .collect();
    for id in ids.iter().step_by(3) {
        dev.remove_peer(*id).unwrap();
    }
    let left = n - n.div_ceil(3);
    let dev = Published::new(dev);
    let c = census(&dev, 5);
    assert_eq!((c.peers, c.with_session), (left, 0));
    // The first five in id order, the removed ones skipped.
    let want: Vec<u32> = ids.iter().copied().filter(|id| id % 3 != 0).take(5).collect();
    assert_eq!(c.exported.iter().map(|p| p.id()).collect::<Vec<_>>(), want);
    let none = census(&dev, 0);
    assert!(none.exported.is_empty() && none.peers == left);
}
