//! The generator: its peers, the flood it prepares, framing, setup.

use super::*;

impl<'a> FloodGen<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        opts: &FloodOptions,
        keys: &Keys,
        wan: Vec<MemQueue>,
        inner: Vec<MemQueue>,
        mac: [u8; 6],
        conc_mac: [u8; 6],
        tids_before: &std::collections::BTreeSet<i32>,
        probe: &'a OnceLock<Arc<Shared>>,
        daemon_done: &'a AtomicBool,
    ) -> Result<FloodGen<'a>, BenchError> {
        let workers = wan.len();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let conc = SocketAddrV4::new(CONC_IP, PORT);
        let conc_public = keys.conc.public_key();
        let make = |role: Role, ks: &[PrivateKey]| -> Result<Vec<GenPeer>, BenchError> {
            ks.iter()
                .enumerate()
                .map(|(i, k)| {
                    let mut dev = Device::new(&mut OsRng, wall);
                    dev.set_private_key(Some(k.clone()));
                    let setup =
                        |e: wgpmd_proto::device::ConfigError| BenchError::Run(format!("generator peer {i}: {e}"));
                    let id = dev.add_peer(&mut OsRng, conc_public).map_err(setup)?;
                    dev.set_endpoint(id, SocketAddr::V4(conc)).map_err(setup)?;
                    dev.add_allowed_ip(id, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).map_err(setup)?;
                    let template = if role == Role::Established {
                        inner_packet(inner_ip(i), HOST_IP, FLOOD_DATA_SIZE, i as u32)
                    } else {
                        Vec::new()
                    };
                    Ok(GenPeer {
                        dev,
                        conc: id,
                        endpoint: addr(role, i),
                        queue: i % workers,
                        skew_ns: 0,
                        completed: false,
                        confirmed: false,
                        probed: false,
                        has_cookie: false,
                        template,
                        next_seq: 0,
                        expect_seq: 0,
                        owe_initiation: false,
                        initiated_at: 0,
                    })
                })
                .collect()
        };
        let established = make(Role::Established, &keys.established)?;
        let storm = make(Role::Storm, &keys.storm)?;
        let retry = make(Role::Retry, &keys.retry)?;
        let mut clocks = Vec::with_capacity(workers);
        for w in 0..workers {
            let name = format!("wgpmd-w{w}");
            let tid = cpu::wait_for_thread(&name, tids_before, SETUP_TIMEOUT)
                .ok_or_else(|| BenchError::Run(format!("the daemon's worker thread {name} did not start")))?;
            clocks.push(ThreadClock::of_tid(tid));
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let shared = loop {
            if let Some(s) = probe.get() {
                break s;
            }
            if daemon_done.load(Ordering::Relaxed) || Instant::now() > deadline {
                return Err(BenchError::Run("the daemon did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let pool =
            Pool::new("flood-gen", 3 * DEPTH).map_err(|e| BenchError::Run(format!("generator buffer pool: {e}")))?;
        let mut g = FloodGen {
            established,
            storm,
            retry,
            wan,
            inner,
            pool,
            mac: EthernetAddress(mac),
            conc_mac: EthernetAddress(conc_mac),
            conc,
            conc_public,
            epoch: Instant::now(),
            out: Output::with_capacity(64),
            rxv: Vec::with_capacity(BURST),
            staging: Vec::with_capacity(BURST),
            ident: 0,
            clocks,
            shared,
            daemon_done,
            flood_pool: Vec::new(),
            junk_pool: Vec::new(),
            flood_next: 0,
            junk_next: 0,
            storm_open: HashSet::new(),
            storm_answered_per_q: vec![0; workers],
            storm_last_cpu: vec![None; workers],
            storm_bad: 0,
            storm_cookies: 0,
            d: DataPhase::default(),
            delivered: 0,
            chunk_index: 0,
            rekeying: false,
            last_busy: (0, 0.0, 0.0),
        };
        g.prepare_flood(opts);
        Ok(g)
    }

    pub(super) fn daemon_gone(&self) -> Result<(), BenchError> {
        if self.daemon_done.load(Ordering::Relaxed) {
            return Err(BenchError::Run("the daemon stopped".into()));
        }
        Ok(())
    }

    pub(super) fn snapshot(&self) -> Vec<HsSnapshot> {
        // Workers publish their counters every 64 poll iterations.
        std::thread::sleep(Duration::from_millis(5));
        (0..self.wan.len()).map(|i| self.shared.hs_snapshot(i)).collect()
    }

    /// Valid-MAC1 initiations with random bodies, and junk of every type.
    pub(super) fn prepare_flood(&mut self, opts: &FloodOptions) {
        let mac1_key = crypto::hash(&[b"mac1----", &self.conc_public]);
        let with_mac1 = |m: &mut [u8]| {
            let n = m.len() - 32;
            let mac = crypto::mac(&mac1_key, &[&m[..n]]);
            m[n..n + 16].copy_from_slice(&mac);
            m[n + 16..].fill(0);
        };
        let random = |len: usize, ty: u8| {
            let mut m = vec![0u8; len];
            OsRng.fill_bytes(&mut m);
            if let Some(h) = m.get_mut(..4) {
                h.copy_from_slice(&[ty, 0, 0, 0]);
            }
            m
        };
        let n = (opts.rate as usize / 10).clamp(256, 8192);
        self.flood_pool = (0..n)
            .map(|_| {
                let mut m = random(INITIATION_LEN, 1);
                with_mac1(&mut m);
                m
            })
            .collect();
        let mut junk = Vec::new();
        for k in 0..64 {
            // A valid-MAC1 initiation with one body bit flipped (MAC1 now wrong).
            let mut m = random(INITIATION_LEN, 1);
            with_mac1(&mut m);
            m[4 + k % 100] ^= 1 << (k % 8);
            junk.push(m);
            junk.push(random(INITIATION_LEN, 1)); // wrong MAC1
            junk.push(random(INITIATION_LEN - 1 - k % 8, 1)); // truncated
            junk.push(random(INITIATION_LEN + 1 + k % 8, 1)); // extended
            let mut m = random(RESPONSE_LEN, 2);
            with_mac1(&mut m); // a response with a valid MAC1 answering nothing
            junk.push(m);
            junk.push(random(RESPONSE_LEN, 2)); // wrong MAC1
            junk.push(random(RESPONSE_LEN + 3, 2)); // wrong length
            junk.push(random(COOKIE_REPLY_LEN, 3)); // a cookie reply for nothing
            junk.push(random(COOKIE_REPLY_LEN - 1, 3));
            junk.push(random(DATA_MIN_LEN + 16 * (k % 4), 4)); // data for no session
            junk.push(random(DATA_MIN_LEN - 1, 4));
            junk.push(random(1 + k % 200, 5 + (k % 250) as u8)); // unknown types
            let mut m = random(INITIATION_LEN, 1);
            with_mac1(&mut m);
            m[1 + k % 3] = 1 + k as u8; // reserved bytes set
            junk.push(m);
            junk.push(vec![1]); // one byte
        }
        self.junk_pool = junk;
    }

    /// Headers of a frame from `from` to the concentrator around `payload`.
    pub(super) fn frame(&mut self, payload: &[u8], from: SocketAddrV4) -> Option<Buffer> {
        let mut b = self.pool.alloc()?;
        b.append(payload.len()).ok()?.copy_from_slice(payload);
        self.frame_buf(b, from)
    }

    pub(super) fn frame_buf(&mut self, buf: Buffer, from: SocketAddrV4) -> Option<Buffer> {
        self.ident = self.ident.wrapping_add(1);
        crate::bench::gen::outer_frame(buf, self.mac, self.conc_mac, from, self.conc, self.ident)
    }

    /// Send frames now on queue `q` (control traffic; waits for ring room).
    pub(super) fn send_now(&mut self, q: usize, bufs: Vec<Buffer>) {
        let mut v = bufs;
        let t = Instant::now();
        while !v.is_empty() && t.elapsed() < STALL {
            self.wan[q].tx_burst(&mut v);
            if !v.is_empty() {
                std::thread::sleep(PACE);
            }
        }
    }

    /// Initiate from a generator peer; returns the framed initiation and its sender index.
    pub(super) fn initiation(&mut self, role: Role, i: usize) -> Option<(usize, Buffer, u32)> {
        let peers = match role {
            Role::Established => &mut self.established,
            Role::Storm => &mut self.storm,
            _ => &mut self.retry,
        };
        let p = &mut peers[i];
        p.skew_ns += STEP_NS;
        let now = Timestamp::from_nanos(1 + self.epoch.elapsed().as_nanos() as u64 + p.skew_ns);
        p.dev.initiate(now, &mut OsRng, p.conc, &mut self.out).ok()?;
        p.completed = false;
        p.owe_initiation = false;
        p.has_cookie = false;
        p.initiated_at = self.chunk_index;
        let (q, from) = (p.queue, p.endpoint);
        let t = self.out.transmits.pop()?;
        self.out.clear();
        let msg = t.payload().to_vec();
        let sender = u32::from_le_bytes(msg.get(4..8)?.try_into().ok()?);
        Some((q, self.frame(&msg, from)?, sender))
    }

    pub(super) fn run(&mut self, opts: &FloodOptions) -> Result<Phases, BenchError> {
        self.setup()?;
        let storm = self.storm_phase(opts)?;
        let alone = self.data_phase(opts, None)?;
        let flood = self.data_phase(opts, Some(alone.pps_wall()))?;
        // Data alone again, on the rekeyed sessions, measured as the first: the two phases
        // around the flood bracket what the machine (and the buffers' history) gave the data.
        let after = self.data_phase(opts, None)?;
        Ok((storm, alone, flood, after))
    }

    /// Every established peer completes a handshake and confirms it with a probe.
    pub(super) fn setup(&mut self) -> Result<(), BenchError> {
        for i in 0..self.established.len() {
            let (q, b, _) = self
                .initiation(Role::Established, i)
                .ok_or_else(|| BenchError::Run(format!("established peer {i}: no initiation")))?;
            self.send_now(q, vec![b]);
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            if self.poll() == 0 {
                std::thread::sleep(PACE);
            }
            for i in 0..self.established.len() {
                let p = &self.established[i];
                if p.completed && !p.confirmed && !p.probed {
                    self.probe(i);
                }
            }
            if self.established.iter().all(|p| p.confirmed) {
                return Ok(());
            }
            self.daemon_gone()?;
            if Instant::now() > deadline {
                let done = self.established.iter().filter(|p| p.completed).count();
                return Err(BenchError::Run(format!(
                    "setup: {done} of {} established peers got a response within {SETUP_TIMEOUT:?}",
                    self.established.len()
                )));
            }
        }
    }

    /// Seal peer `i`'s template with sequence number u64::MAX (a probe) and send it.
    pub(super) fn probe(&mut self, i: usize) {
        self.established[i].probed = true;
        let Some(b) = self.data_packet(i, u64::MAX) else { return };
        let q = self.established[i].queue;
        self.send_now(q, vec![b]);
    }

    /// Established peer `i`'s data packet with sequence number `seq`, sealed and framed.
    pub(super) fn data_packet(&mut self, i: usize, seq: u64) -> Option<Buffer> {
        let mut b = self.pool.alloc()?;
        let p = &mut self.established[i];
        let now = Timestamp::from_nanos(1 + self.epoch.elapsed().as_nanos() as u64 + p.skew_ns);
        let d = b.append(FLOOD_DATA_SIZE).ok()?;
        d.copy_from_slice(&p.template);
        d[SEQ].copy_from_slice(&seq.to_be_bytes());
        b.prepend(DATA_HEADER_LEN).ok()?;
        let e = p.dev.encapsulate_to(now, p.conc, b.data_and_tailroom_mut(), FLOOD_DATA_SIZE, &mut self.out);
        self.out.clear();
        b.set_len(e.ok()?.len).ok()?;
        let from = p.endpoint;
        self.frame_buf(b, from)
    }
}

pub(super) fn pool_empty() -> BenchError {
    BenchError::Run("generator pool exhausted".into())
}
