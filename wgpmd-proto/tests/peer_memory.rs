//! Per-peer memory bounds, measured with a counting global allocator (every byte the process
//! asks the allocator for, net of what it gives back): a configured peer with no session costs
//! at most 1 KiB, and one with an established session (a current keypair that seals and opens)
//! at most 2 KiB, tables included (peer slot, public-key map, allowed IPs, receiver indices),
//! with the device published as the daemon holds it (`Published`: two copies of the tables).
//!
//! One test in this binary, so nothing else allocates while it measures. `examples/peer_memory.rs`
//! reports the same numbers at 100k, 1M and 4M peers.
#![forbid(unsafe_code)]

#[path = "common/peer_load.rs"]
mod peer_load;

use std::alloc::System;

use peer_load::{Hub, Remotes};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use wgpmd_proto::device::{Device, Published};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not freed since `region` began.
fn net(region: &Region<System>) -> i64 {
    let c = region.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64
}

#[test]
fn idle_peer_at_most_1_kib_and_with_a_session_at_most_2_kib() {
    const IDLE: u32 = 30_000;
    const SESSIONS: usize = 2_000;
    let mut hub = Hub::new(11);
    let mut remotes = Remotes::new(&mut hub, SESSIONS);
    remotes.ids.reserve(SESSIONS);

    let region = Region::new(GLOBAL);
    remotes.add_to_hub(&mut hub, 0);
    drop(hub.add_random_peers(SESSIONS as u32, IDLE));
    let peers = i64::from(IDLE) + SESSIONS as i64;
    assert_eq!(hub.dev.peer_count() as i64, peers);
    // As the daemon holds it: published, with the writer's second copy of the tables.
    let dev = std::mem::replace(&mut hub.dev, Device::new(&mut hub.rng, 0));
    let published = Published::new(dev);
    let idle = net(&region) / peers;
    let tables = {
        let r = Region::new(GLOBAL);
        hub.dev = published.into_inner().expect("no reader");
        -net(&r) / peers
    };

    let region = Region::new(GLOBAL);
    {
        // Created and dropped inside the region: only the hub's growth remains.
        let mut player = remotes.player(&mut hub);
        for j in 0..SESSIONS {
            remotes.hub_initiates(&mut player, &mut hub, j);
        }
    }
    let session = net(&region) / SESSIONS as i64;
    for &id in &remotes.ids {
        assert!(hub.dev.peer(id).unwrap().current_local_index().is_some(), "peer {id} has a session");
    }
    println!(
        "bytes per idle peer (published, both copies of the tables): {idle}, of which the second copy {tables}; \
         added by a session: {session}; total {}",
        idle + session
    );
    assert!(tables > 0, "the second copy of the tables was counted");
    assert!(idle > 0 && session > 0, "the allocator counted nothing");
    assert!(idle <= 1024, "idle peer costs {idle} B");
    assert!(idle + session <= 2048, "peer with a session costs {} B", idle + session);
}
