//! The `vhost-user:` port against a frontend of our own (rust-vmm's `vhost` frontend, the
//! memory a file in /dev/shm that both sides map): a good frame arrives as its IP packet, and
//! a frontend that sends overlapping or huge memory regions, a descriptor outside its memory or
//! a descriptor chain that loops is refused: counted, logged, disconnected, and the port serves
//! the next frontend.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nic_backends::{open, Pool, Port, PortOptions, Queue};
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The frontend's memory: 1 MiB at guest address 0.
const SIZE: usize = 1 << 20;
/// Where the frontend says it mapped it (vring addresses are given in its address space).
const VA: u64 = 0x7f00_0000_0000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const BUF: u64 = 0x10000;
const QSIZE: u16 = 16;

static N: AtomicU64 = AtomicU64::new(0);

struct Guest {
    fe: Frontend,
    mem: GuestMemoryMmap,
    _file: File,
    _kick: EventFd,
    _call: EventFd,
}

fn shm_file() -> File {
    let path = format!("/dev/shm/nicb-vhu-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f.set_len(SIZE as u64).unwrap();
    f
}

/// Connect, negotiate, and send a memory table of `regions` (guest address, size, offset in
/// the file); `Err` if the port refused something.
fn connect(path: &str, regions: &[(u64, u64, u64)]) -> Result<Guest, vhost::Error> {
    let file = shm_file();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        SIZE,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    let mut fe = Frontend::connect(path, 2)?;
    fe.set_owner()?;
    let f = fe.get_features()?;
    fe.set_features(f)?;
    if f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        let pf = fe.get_protocol_features()?;
        fe.set_protocol_features(pf)?;
    }
    let table: Vec<VhostUserMemoryRegionInfo> = regions
        .iter()
        .map(|&(gpa, size, off)| VhostUserMemoryRegionInfo {
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: VA + gpa,
            mmap_offset: off,
            mmap_handle: file.as_raw_fd(),
        })
        .collect();
    fe.set_mem_table(&table)?;
    Ok(Guest { fe, mem, _file: file, _kick: EventFd::new(0).unwrap(), _call: EventFd::new(0).unwrap() })
}

/// Set up the frontend's transmit queue (queue 1) on our rings.
fn start_tx(g: &mut Guest) -> Result<(), vhost::Error> {
    let q = 1;
    g.fe.set_vring_num(q, QSIZE)?;
    g.fe.set_vring_addr(
        q,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: VA + DESC,
            used_ring_addr: VA + USED,
            avail_ring_addr: VA + AVAIL,
            log_addr: None,
        },
    )?;
    g.fe.set_vring_base(q, 0)?;
    g.fe.set_vring_call(q, &g._call)?;
    g.fe.set_vring_kick(q, &g._kick)?;
    // Only with protocol features (the port offers none: the ring is enabled by its kick).
    if g.fe.get_features()? & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        g.fe.set_vring_enable(q, true)?;
    }
    Ok(())
}

/// Write descriptors `(addr, len, flags, next)` and make descriptor 0 available.
fn post(g: &Guest, descs: &[(u64, u32, u16, u16)], avail_idx: u16) {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let at = GuestAddress(DESC + 16 * i as u64);
        g.mem.write_obj(addr, at).unwrap();
        g.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        g.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        g.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }
    let slot = (avail_idx - 1) % QSIZE;
    g.mem.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * u64::from(slot))).unwrap();
    g.mem.write_obj(avail_idx, GuestAddress(AVAIL + 2)).unwrap();
}

/// A virtio-net header and an Ethernet/IPv4 frame at `BUF`; returns its length.
fn frame(g: &Guest) -> u32 {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x02, 0x77, 0x67, 0x70, 0x6d, 0x64, 0x02, 0, 0, 0, 0, 9, 0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
    f.extend_from_slice(&[0, 9, 0, 9, 0, 8, 0, 0]);
    g.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    f.len() as u32
}

fn counter(port: &dyn Port, key: &str) -> u64 {
    let extra = port.extra_stats().unwrap();
    extra().into_iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no counter {key}")).1
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls until the port has the frontend and `q` delivers something (or 2 s pass).
fn poll(q: &mut dyn Queue, pool: &Pool) -> Vec<nic_backends::Buffer> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while out.is_empty() && Instant::now() < deadline {
        q.rx_burst(pool, &mut out, 32);
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

/// A good frontend: the frame arrives as its IP packet.
fn good_session(path: &str, port: &dyn Port, q: &mut dyn Queue, pool: &Pool) {
    let connections = counter(port, "vhost_user_connections");
    let mut g = connect(path, &[(0, SIZE as u64, 0)]).expect("a good frontend is served");
    start_tx(&mut g).unwrap();
    wait_for("the frontend", || counter(port, "vhost_user_connections") > connections);
    let len = frame(&g);
    post(&g, &[(BUF, len, 0, 0)], 1);
    let got = poll(q, pool);
    assert_eq!(got.len(), 1, "the frame arrives");
    assert_eq!(got[0].data().len(), 28);
    assert_eq!(&got[0].data()[12..20], &[10, 0, 0, 2, 10, 0, 0, 1]);
    // Used ring: the descriptor came back.
    let used_idx: u16 = g.mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, 1);
}

#[test]
fn bad_frontends_are_refused_and_the_port_serves_the_next() {
    let path = format!("/tmp/nicb-vhu-{}.sock", std::process::id());
    let mut port = open(&format!("vhost-user:{path}"), &PortOptions::default()).unwrap();
    assert_eq!(port.info().kind, "vhost-user");
    let mut q = port.take_queue(0).unwrap();
    let pool = Pool::new("vhu", 64).unwrap();
    assert!(!port.link_up());

    good_session(&path, port.as_ref(), q.as_mut(), &pool);

    // A descriptor outside every region.
    let bad0 = counter(port.as_ref(), "vhost_user_bad_descriptors");
    let disc0 = counter(port.as_ref(), "vhost_user_disconnects");
    let mut g = connect(&path, &[(0, SIZE as u64, 0)]).unwrap();
    start_tx(&mut g).unwrap();
    wait_for("the second frontend", || counter(port.as_ref(), "vhost_user_connections") == 2);
    post(&g, &[(0x4000_0000, 64, 0, 0)], 1);
    assert!(poll(q.as_mut(), &pool).is_empty());
    assert_eq!(counter(port.as_ref(), "vhost_user_bad_descriptors"), bad0 + 1);
    wait_for("the disconnect", || counter(port.as_ref(), "vhost_user_disconnects") > disc0);
    assert!(g.fe.get_features().is_err(), "the frontend was disconnected");
    drop(g);

    // A chain that loops: 0 -> 1 -> 0.
    let disc0 = counter(port.as_ref(), "vhost_user_disconnects");
    let mut g = connect(&path, &[(0, SIZE as u64, 0)]).unwrap();
    start_tx(&mut g).unwrap();
    wait_for("the third frontend", || counter(port.as_ref(), "vhost_user_connections") == 3);
    let len = frame(&g);
    post(&g, &[(BUF, len, 1, 1), (BUF, len, 1, 0)], 1);
    assert!(poll(q.as_mut(), &pool).is_empty());
    assert_eq!(counter(port.as_ref(), "vhost_user_bad_descriptors"), bad0 + 2);
    wait_for("the disconnect", || counter(port.as_ref(), "vhost_user_disconnects") > disc0);
    drop(g);

    // Overlapping regions, and a region far larger than its file: refused (the connection
    // ends with a protocol error), nothing mapped.
    for (what, regions) in
        [("overlapping", vec![(0, SIZE as u64, 0), (0x8000, SIZE as u64, 0)]), ("huge", vec![(0, 1u64 << 46, 0)])]
    {
        let errs = counter(port.as_ref(), "vhost_user_protocol_errors");
        // The frontend may not wait for an answer to its table: then the refusal shows as the
        // connection closing.
        let r = connect(&path, &regions);
        wait_for(&format!("the protocol error for a {what} table"), || {
            counter(port.as_ref(), "vhost_user_protocol_errors") > errs
        });
        if let Ok(g) = r {
            assert!(g.fe.get_features().is_err(), "{what}: the frontend is still connected");
        }
    }

    // And the port still serves a good frontend.
    good_session(&path, port.as_ref(), q.as_mut(), &pool);
    assert_eq!(q.stats().rx_errors, 2);
    drop(q);
    drop(port);
    assert!(!std::path::Path::new(&path).exists(), "socket left behind");
}
