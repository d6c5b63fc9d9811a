//! The committed fuzz corpora (`fuzz/corpus/<target>/`) replayed through the fuzz bodies on
//! stable, the bodies of the UAPI, wg.conf and live-device targets run over mutated seeds, and
//! the handshake batch body over random recipes.
//!
//! Every input the campaign kept (and every crash it found, committed as a regression input)
//! runs again on every test run; each replay also checks that its corpus is there and that it
//! reaches the deep branches (a set applied, a file parsed, data opened through a session), so
//! an emptied or shallow corpus fails.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd_proto::crypto::PrivateKey;
use wgpmd_proto::device::{DropReason, HandshakeOutcome};
use wgpmd_proto::fuzzing::{
    device_live, device_message, handshake_batch, uapi_request, wg_conf, wire_frame, wireguard_message, UapiReached,
    UAPI_KEYS,
};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

/// The corpus of `target`, in name order; at least `min` inputs.
fn corpus(target: &str, min: usize) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    assert!(v.len() >= min, "{}: {} inputs, expected at least {min}", dir.display(), v.len());
    v
}

#[test]
fn corpus_wire_frame_replays() {
    let c = corpus("wire_frame", 32);
    let deep = c.iter().filter(|(_, d)| wire_frame(d).udp).count();
    assert!(deep >= 8, "only {deep} inputs reached UDP");
}

#[test]
fn corpus_wireguard_message_replays() {
    let c = corpus("wireguard_message", 8);
    let ok = c.iter().filter(|(_, d)| wireguard_message(d).is_ok()).count();
    assert!(ok >= 4, "only {ok} inputs classified as WireGuard messages");
}

#[test]
fn corpus_device_message_replays() {
    let c = corpus("device_message", 8);
    let mac1 = c.iter().filter(|(_, d)| device_message(d).mac1).count();
    assert!(mac1 >= 2, "only {mac1} inputs passed MAC1");
}

#[test]
fn corpus_device_live_replays() {
    let c = corpus("device_live", 8);
    let (mut opened, mut sessions) = (0, 0);
    for (_, d) in &c {
        let r = device_live(d);
        opened += r.d_opened + r.i_opened;
        sessions += r.sessions;
    }
    assert!(opened >= 8 && sessions >= 2, "opened {opened}, sessions {sessions}");
}

#[test]
fn corpus_uapi_request_replays() {
    let c = corpus("uapi_request", 8);
    let applied = c.iter().filter(|(_, d)| matches!(uapi_request(d), UapiReached::Set { .. })).count();
    assert!(applied >= 4, "only {applied} requests applied");
}

#[test]
fn corpus_wg_conf_replays() {
    let c = corpus("wg_conf", 4);
    let parsed = c.iter().filter(|(_, d)| wg_conf(d).is_ok()).count();
    assert!(parsed >= 2, "only {parsed} files parsed");
}

#[test]
fn corpus_handshake_batch_replays() {
    let c = corpus("handshake_batch", 8);
    let (mut responded, mut lanes, mut completed) = (0, 0, 0);
    for (_, d) in &c {
        let r = handshake_batch(d);
        responded += r.responded;
        lanes += r.lane_initiations;
        completed += r.completed;
    }
    assert!(
        responded >= 16 && lanes >= 8 && completed >= 1,
        "answered {responded}, lanes {lanes}, completed {completed}"
    );
}

/// The `handshake_batch` seed recipes do what their names say: each batch's outcomes, and how
/// many of its initiations ran in lanes. (Checked on the recipes, not the files: a corpus
/// minimization renames and may drop the files.)
#[test]
fn handshake_batch_seeds_reach_what_they_are_named_for() {
    for (name, recipe, outcomes, lanes) in handshake_batch_seeds() {
        let r = handshake_batch(&recipe);
        let got: Vec<String> = r.results.iter().map(outcome).collect();
        assert_eq!(
            (got, r.lane_initiations),
            (outcomes.iter().map(|o| o.to_string()).collect(), lanes),
            "{name}: {r:?}"
        );
    }
}

/// A batch result's variant, without the peer.
fn outcome(r: &Result<HandshakeOutcome, DropReason>) -> String {
    let name = match r {
        Ok(o) => format!("{o:?}"),
        Err(e) => format!("{e:?}"),
    };
    name.split('(').next().unwrap().to_owned()
}

/// Random recipes (a few mutations at most, so that most messages keep a valid mac1): the body
/// checks every batch against the one-at-a-time path; here, that enough of them got to the DH
/// stage and through the lanes for those checks to mean something.
#[test]
fn handshake_batch_body_on_random_recipes() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x6261_7463);
    const INPUTS: usize = 3_000;
    let (mut dh, mut lanes, mut responded, mut completed, mut cookies, mut dh_jobs) = (0, 0, 0, 0, 0, 0);
    let mut outcomes = std::collections::BTreeMap::new();
    for _ in 0..INPUTS {
        let r = handshake_batch(&random_recipe(&mut rng));
        dh += usize::from(r.dh_jobs > 0);
        lanes += usize::from(r.lane_initiations > 0);
        responded += r.responded;
        completed += r.completed;
        cookies += r.cookies_sent;
        dh_jobs += r.dh_jobs;
        for o in &r.results {
            *outcomes.entry(outcome(o)).or_insert(0) += 1;
        }
    }
    println!(
        "{INPUTS} recipes: {dh} reached DH, {lanes} through lanes; {dh_jobs} jobs at DH, {responded} answered, \
         {completed} completed, {cookies} cookie replies; outcomes {outcomes:?}"
    );
    assert!(dh >= INPUTS * 3 / 4 && lanes >= INPUTS / 2, "{dh} reached DH, {lanes} through lanes");
    assert!(responded >= INPUTS && completed >= 20 && cookies >= 100, "{responded} {completed} {cookies}");
    for o in
        ["Responded", "Completed", "CookieSent", "CookieStored", "UnknownPeer", "InitiationReplay", "HandshakeFailed"]
    {
        assert!(outcomes.get(o).copied().unwrap_or(0) >= 5, "{o}: {outcomes:?}");
    }
}

/// A `handshake_batch` recipe (the format is in the body's docs): mostly valid messages, some
/// with a valid mac2, a few mutated, under load or not.
fn random_recipe(rng: &mut ChaCha20Rng) -> Vec<u8> {
    let n = rng.gen_range(1..=8u8);
    let mut r = vec![(n - 1) | (rng.gen::<u8>() & 0x78)];
    for _ in 0..n {
        // Initiations of the peers (0..16) most of the time, each other base sometimes.
        let a = if rng.gen_bool(0.7) { rng.gen_range(0..16) } else { rng.gen_range(16..21) };
        let mutations = if rng.gen_bool(0.8) { 0 } else { rng.gen_range(1..=3u8) };
        let flags = (rng.gen::<u8>() & 0x1f) | mutations << 5;
        // The source mostly the sender's own, and mac1 mostly recomputed after mutations.
        let flags = if rng.gen_bool(0.7) { flags & !0x0c } else { flags };
        let flags = if mutations > 0 && rng.gen_bool(0.7) { flags | 2 } else { flags };
        r.extend([a, flags]);
        if a == 20 {
            r.extend([rng.gen::<u8>(), rng.gen::<u8>()]);
        }
        for _ in 0..mutations {
            r.extend([rng.gen_range(0..150u8), rng.gen::<u8>()]);
        }
    }
    r
}

/// Byte-level mutations of a seed: flips, overwrites, insertions, deletions, splices of a
/// dictionary word.
fn mutate(rng: &mut ChaCha20Rng, s: &[u8], words: &[&[u8]]) -> Vec<u8> {
    let mut m = s.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..5) {
            0 if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                m[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                m[i] = rng.gen();
            }
            2 => {
                let i = rng.gen_range(0..=m.len());
                let w = words[rng.gen_range(0..words.len())];
                m.splice(i..i, w.iter().copied());
            }
            3 if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                let j = rng.gen_range(i..=m.len().min(i + 16));
                m.drain(i..j);
            }
            _ => m.truncate(rng.gen_range(0..=m.len())),
        }
    }
    m
}

#[test]
fn uapi_body_on_mutated_requests() {
    let seeds = corpus("uapi_request", 8);
    let words: &[&[u8]] = &[
        b"\n",
        b"=",
        b"remove=true\n",
        b"update_only=true\n",
        b"replace_peers=true\n",
        b"replace_allowed_ips=true\n",
        b"allowed_ip=10.0.0.0/8\n",
        b"endpoint=[::1]:1\n",
        b"listen_port=0\n",
    ];
    let mut rng = ChaCha20Rng::seed_from_u64(0x7561_7069);
    let (mut set, mut refused) = (0, 0);
    for _ in 0..50_000 {
        let s = &seeds[rng.gen_range(0..seeds.len())].1;
        match uapi_request(&mutate(&mut rng, s, words)) {
            UapiReached::Set { .. } => set += 1,
            UapiReached::SetRefused => refused += 1,
            _ => {}
        }
    }
    assert!(set >= 1_000, "only {set} mutated requests applied");
    println!("50000 mutated requests: {set} applied, {refused} refused at the peer limit");
}

#[test]
fn wg_conf_body_on_mutated_files() {
    let seeds = corpus("wg_conf", 4);
    let words: &[&[u8]] =
        &[b"\n", b"[Peer]\n", b"#", b" = ", b"AllowedIPs = ::/0, 10.0.0.1/32\n", b"Endpoint = resolves:1\n"];
    let mut rng = ChaCha20Rng::seed_from_u64(0x636f_6e66);
    let mut parsed = 0;
    for _ in 0..50_000 {
        let s = &seeds[rng.gen_range(0..seeds.len())].1;
        parsed += usize::from(wg_conf(&mutate(&mut rng, s, words)).is_ok());
    }
    assert!(parsed >= 1_000, "only {parsed} mutated files parsed");
}

#[test]
fn device_live_body_on_random_scripts() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x6c69_7665);
    let (mut opened, mut sessions, mut cookies) = (0u64, 0u64, 0u64);
    for _ in 0..4_000 {
        let mut s = vec![0u8; 1 + 4 * rng.gen_range(1..24)];
        rng.fill(&mut s[..]);
        let r = device_live(&s);
        opened += u64::from(r.d_opened + r.i_opened);
        sessions += r.sessions;
        cookies += r.cookies;
    }
    println!("4000 scripts: {opened} data messages opened, {sessions} sessions, {cookies} cookie replies");
    assert!(opened >= 1_000 && sessions >= 500 && cookies >= 10, "{opened} {sessions} {cookies}");
}

/// Writes the seed corpora and dictionaries of `uapi_request` and `wg_conf` and the seed corpus
/// of `device_live` (`device_message`'s corpus is what a fuzzing campaign kept, minimized;
/// `handshake_batch`'s is written by `write_handshake_batch_seeds`). Run by hand when the bodies
/// change:
/// `cargo test --release -p wgpmd-proto --test fuzz_corpus -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/ and fuzz/dict/ (run by hand)"]
fn write_fuzz_seeds() {
    let hexkey = |i: usize| hex::encode(PrivateKey::from_bytes(UAPI_KEYS[i]).public_key());
    let b64 = |k: [u8; 32]| base64_encode(&k);
    let write = |target: &str, name: &str, data: &[u8]| {
        let d = corpus_dir(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };
    let (p1, p2, p3, p4) = (hexkey(1), hexkey(2), hexkey(3), hexkey(4));
    let own = hex::encode(UAPI_KEYS[0]);
    let uapi: Vec<(&str, String)> = vec![
        ("get", "get=1\n\n".into()),
        ("set-keepalive", format!("set=1\npublic_key={p2}\npersistent_keepalive_interval=5\nreplace_allowed_ips=true\nallowed_ip=10.100.0.2/32\n\n")),
        ("set-add", format!("set=1\npublic_key={p4}\nendpoint=10.99.0.77:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.100.0.77/32\nallowed_ip=fd00::77/128\n\n")),
        ("set-add-v6-endpoint", format!("set=1\npublic_key={p4}\nendpoint=[2001:db8::1]:443\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\n\n")),
        ("set-update-only", format!("set=1\npublic_key={p4}\nupdate_only=true\npersistent_keepalive_interval=0\n\n")),
        ("set-remove", format!("set=1\npublic_key={p3}\nremove=true\n\n")),
        ("set-remove-live", format!("set=1\npublic_key={p1}\nremove=true\n\n")),
        ("set-replace-peers", format!("set=1\nreplace_peers=true\npublic_key={p1}\nallowed_ip=10.0.0.2/32\npublic_key={p4}\nallowed_ip=10.0.0.9/32\n\n")),
        ("set-same-private-key", format!("set=1\nprivate_key={own}\nlisten_port=51820\nfwmark=0\n\n")),
        ("set-peer-private-key", format!("set=1\nprivate_key={}\n\n", hex::encode(UAPI_KEYS[2]))),
        ("set-remove-private-key", format!("set=1\nprivate_key={}\n\n", "0".repeat(64))),
        ("set-listen-fwmark", "set=1\nlisten_port=12345\nfwmark=4660\n\n".into()),
        ("set-psk-live", format!("set=1\npublic_key={p1}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.9:9\n\n", "ab".repeat(32))),
        ("set-move-allowed", format!("set=1\npublic_key={p2}\nallowed_ip=10.0.0.2/32\npublic_key={p1}\nreplace_allowed_ips=true\n\n")),
        ("set-own-key-peer", format!("set=1\npublic_key={}\nallowed_ip=10.1.0.0/16\n\n", hex::encode(PrivateKey::from_bytes(UAPI_KEYS[0]).public_key()))),
        ("set-over-limit", {
            let mut s = String::from("set=1\n");
            for i in 0..4u8 {
                s += &format!("public_key={}\nallowed_ip=10.9.{i}.0/24\n", hex::encode(PrivateKey::from_bytes([0x70 + i; 32]).public_key()));
            }
            s + "\n"
        }),
        ("set-bogus", "set=1\nbogus_key=1\n\n".into()),
        ("set-crlf", format!("set=1\r\npublic_key={p2}\r\nallowed_ip=10.5.0.0/16\r\n\r\n")),
    ];
    for (n, r) in &uapi {
        write("uapi_request", n, r.as_bytes());
    }
    let mut dict =
        String::from("# UAPI keys and values (wireguard-go device/uapi.go); public keys of the body's peers\n");
    for w in [
        "get=1\\x0a",
        "set=1\\x0a",
        "\\x0a\\x0a",
        "private_key=",
        "listen_port=",
        "fwmark=",
        "replace_peers=true",
        "public_key=",
        "remove=true",
        "update_only=true",
        "preshared_key=",
        "endpoint=",
        "persistent_keepalive_interval=",
        "replace_allowed_ips=true",
        "allowed_ip=",
        "protocol_version=1",
        "=true",
        "=false",
        "[::1]:51820",
        "[fe80::1%eth0]:1",
        "0.0.0.0/0",
        "::/0",
        "/32",
        "/128",
        "65535",
        "4294967295",
    ] {
        dict += &format!("\"{w}\"\n");
    }
    for i in 0..5 {
        dict += &format!("\"{}\"\n", hexkey(i));
    }
    dict += &format!("\"{own}\"\n");
    std::fs::create_dir_all(corpus_dir("../dict")).unwrap();
    std::fs::write(corpus_dir("../dict").join("uapi_request.dict"), dict).unwrap();

    let (k1, k2) = (PrivateKey::from_bytes([0x31; 32]), PrivateKey::from_bytes([0x32; 32]));
    let confs: Vec<(&str, String)> = vec![
        ("full", format!("[Interface]\nPrivateKey = {}\nListenPort = 51820\nFwMark = 0x1234\n\n[Peer]\nPublicKey = {}\nPresharedKey = {}\nAllowedIPs = 10.0.0.2/32, fd00::2/128\nEndpoint = 192.0.2.2:51820\nPersistentKeepalive = 25\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = [2001:db8::1]:443\n", b64(k1.to_bytes()), b64(k2.public_key()), b64([0x77; 32]), b64(PrivateKey::from_bytes([0x33; 32]).public_key()))),
        ("minimal", format!("[Interface]\nPrivateKey = {}\n", b64(k1.to_bytes()))),
        ("names-and-comments", format!("# a comment\n[interface] # trailing\nprivatekey={}\nfwmark = off\n[peer]\npublickey = {}\nendpoint = resolves:51820\npersistentkeepalive = off\nallowedips = 10.0.0.0/8\nallowedips = 192.168.0.0/16\n", b64(k1.to_bytes()), b64(k2.public_key()))),
        ("unresolved", format!("[Interface]\n[Peer]\nPublicKey = {}\nEndpoint = nowhere.example:1\n", b64(k2.public_key()))),
        ("own-key-peer", format!("[Interface]\nPrivateKey = {}\n[Peer]\nPublicKey = {}\n", b64(k1.to_bytes()), b64(k1.public_key()))),
        ("wg-quick", format!("[Interface]\nAddress = 10.0.0.1/24\nPrivateKey = {}\n", b64(k1.to_bytes()))),
        ("duplicate", format!("[Interface]\n[Peer]\nPublicKey = {0}\n[Peer]\nPublicKey = {0}\n", b64(k2.public_key()))),
    ];
    for (n, c) in &confs {
        write("wg_conf", n, c.as_bytes());
    }
    let mut dict = String::from("# wg.conf(5) sections, keys and values\n");
    for w in [
        "[Interface]",
        "[Peer]",
        "PrivateKey",
        "ListenPort",
        "FwMark",
        "PublicKey",
        "PresharedKey",
        "AllowedIPs",
        "Endpoint",
        "PersistentKeepalive",
        " = ",
        "off",
        "0x",
        "#",
        ", ",
        "resolves:",
        "[::1]:",
        "/0",
        "/128",
        "Address",
        "DNS",
        "MTU",
        "Table",
        "PreUp",
        "SaveConfig",
        "\\x0a",
    ] {
        dict += &format!("\"{w}\"\n");
    }
    dict += &format!("\"{}\"\n\"{}\"\n", b64(k1.to_bytes()), b64(k2.public_key()));
    std::fs::write(corpus_dir("../dict").join("wg_conf.dict"), dict).unwrap();

    // device_live scripts: [flags] then [op, a, b, c]...
    let scripts: Vec<(&str, Vec<[u8; 4]>)> = vec![
        ("data-both-ways", vec![[0, 10, 0, 1], [1, 20, 0, 2], [0, 200, 0, 3], [1, 255, 0, 4]]),
        ("replay", vec![[0, 10, 0, 1], [2, 0, 0, 0], [0, 11, 0, 1], [2, 1, 0, 0]]),
        ("forge", vec![[0, 10, 0, 1], [3, 0, 20, 1], [3, 0, 2, 1], [3, 0, 40, 128]]),
        ("roam", vec![[0, 10, 1, 1], [1, 10, 0, 0], [0, 10, 3, 1], [1, 10, 0, 0]]),
        ("rekey-by-time", vec![[4, 31, 7, 3], [0, 10, 0, 0], [7, 0, 0, 0], [0, 10, 0, 0], [1, 10, 0, 0]]),
        ("keepalive-timer", vec![[0, 10, 0, 0], [4, 11, 0, 2], [7, 0, 0, 0], [4, 11, 0, 2], [7, 0, 0, 0]]),
        (
            "cookie-under-load",
            vec![[8, 1, 0, 0], [5, 0, 0, 0], [7, 0, 0, 0], [4, 6, 0, 2], [5, 0, 0, 0], [7, 0, 0, 0], [0, 1, 0, 0]],
        ),
        ("d-initiates", vec![[6, 0, 0, 0], [7, 0, 0, 0], [1, 10, 0, 0], [0, 10, 0, 0]]),
        ("lossy-handshake", vec![[4, 6, 0, 2], [5, 0, 0, 0], [7, 1, 0, 0], [4, 6, 0, 2], [7, 6, 0, 0], [0, 1, 0, 0]]),
        ("burst-reordered", vec![[11, 7, 3, 1], [11, 3, 1, 0], [2, 3, 0, 0]]),
        ("forged-handshake", vec![[5, 0, 0, 0], [9, 0, 7, 1], [9, 1, 100, 4], [7, 0, 0, 0]]),
        ("expiry", vec![[4, 31, 7, 3], [4, 31, 7, 3], [4, 31, 7, 3], [1, 1, 0, 0], [7, 0, 0, 0], [0, 1, 0, 0]]),
        ("keepalives", vec![[10, 1, 0, 0], [10, 0, 0, 0], [7, 4, 0, 0]]),
    ];
    for (n, ops) in &scripts {
        for heal in [0u8, 3] {
            let mut b = vec![heal];
            b.extend(ops.iter().flatten());
            write("device_live", &format!("{n}-{heal}"), &b);
        }
    }
}

/// The `handshake_batch` seeds: name, recipe (the format is in the body's docs), the batch's
/// outcomes, and how many initiations run in lanes.
fn handshake_batch_seeds() -> Vec<(&'static str, Vec<u8>, Vec<&'static str>, u64)> {
    // Per job `[base, flags]` (+ 2 bytes for random bytes, + 2 per mutation), after the head.
    const UNDER_LOAD: u8 = 0x08 | 0x10;
    const IN_FLIGHT: u8 = 0x20;
    const UNSCREENED: u8 = 0x40;
    let newer = |k: u8| [2 * k + 1, 0];
    let older = |k: u8| [2 * k, 0];
    let valid = |n: u8| -> Vec<u8> { std::iter::once(n - 1).chain((0..n).flat_map(newer)).collect() };
    let batch = |head: u8, jobs: &[&[u8]]| -> Vec<u8> {
        let mut v = vec![(jobs.len() as u8 - 1) | head];
        jobs.iter().for_each(|j| v.extend_from_slice(j));
        v
    };
    let (stranger, resp0, resp1, cookie1) = ([16, 0], [17, 0], [18, 0], [19, 0]);
    let (r, replay, failed) = ("Responded", "InitiationReplay", "HandshakeFailed");
    vec![
        // The empty input: peer 0's older initiation.
        ("valid-1", vec![], vec![r], 0),
        ("valid-2", valid(2), vec![r; 2], 2),
        ("valid-5", valid(5), vec![r; 5], 5),
        ("valid-8", valid(8), vec![r; 8], 8),
        // Older after newer: a replay; newer after older: a flood (more than 50 a second).
        (
            "replay-and-flood",
            batch(0, &[&newer(0), &older(0), &older(1), &newer(1), &newer(2), &newer(0)]),
            vec![r, replay, r, replay, r, replay],
            6,
        ),
        // Screened and processed under load: a valid mac2 (flag bit 0) for some, none for two
        // (cookie replies at screening).
        ("under-load-mac2", batch(UNDER_LOAD, &[&[1, 1], &[3, 1], &[5, 0], &[7, 1], &[9, 1], &[11, 0]]), vec![r; 4], 4),
        // Screened not under load, processed under load: mac2 checked in the batch.
        ("load-after-screening", batch(0x10, &[&[1, 1], &[3, 0], &[5, 1], &[7, 1]]), vec![r, "CookieSent", r, r], 3),
        // Our handshakes completed between batched initiations, and a cookie reply (unscreened:
        // screening would take it).
        (
            "responses-in-batch",
            batch(UNSCREENED, &[&newer(2), &newer(3), &resp0, &newer(4), &newer(5), &cookie1, &resp1]),
            vec![r, r, "Completed", r, r, "CookieStored", "Completed"],
            4,
        ),
        // Peer 0's initiation replaces our handshake with it before its response comes.
        (
            "initiation-replaces-ours",
            batch(IN_FLIGHT, &[&newer(0), &newer(3), &resp0, &newer(4)]),
            vec![r, r, "UnknownIndex", r],
            2,
        ),
        // The stranger, random bytes with a valid mac1 (type 1, 148 bytes), and two peers.
        (
            "stranger-and-random",
            batch(0, &[&stranger, &[20, 2, 0xb0, 7], &newer(6), &newer(7)]),
            vec!["UnknownPeer", failed, r, r],
            4,
        ),
        // A flipped bit in an encrypted static and in a timestamp, mac1 recomputed.
        (
            "corrupt-in-batch",
            batch(0, &[&newer(1), &[3, 0x22, 40, 0x20], &newer(5), &[7, 0x22, 100, 1]]),
            vec![r, failed, r, failed],
            4,
        ),
        // Other sources than the peers' own addresses (IPv4, IPv6, another peer's), under load
        // with mac2.
        ("roaming", batch(UNDER_LOAD, &[&[1, 0x05], &[3, 0x09], &[5, 0x0d], &[7, 0x01]]), vec![r; 4], 4),
        // Unscreened jobs: a bad mac1 (not checked again: screening's job, so it is answered), a
        // data message, a message too short.
        (
            "unscreened-junk",
            batch(UNSCREENED, &[&newer(0), &[3, 0x20, 120, 1], &[20, 0, 0xd3, 1], &[20, 0, 0x21, 2], &newer(4)]),
            vec![r, r, "Malformed", "Malformed", r],
            3,
        ),
    ]
}

/// Writes the `handshake_batch` seed corpus. Run by hand when the body's recipe changes:
/// `cargo test --release -p wgpmd-proto --test fuzz_corpus -- --ignored write_handshake_batch_seeds`.
#[test]
#[ignore = "writes fuzz/corpus/handshake_batch/ (run by hand)"]
fn write_handshake_batch_seeds() {
    let d = corpus_dir("handshake_batch");
    std::fs::create_dir_all(&d).unwrap();
    for (name, recipe, _, _) in handshake_batch_seeds() {
        std::fs::write(d.join(name), recipe).unwrap();
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
