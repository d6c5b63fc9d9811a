//! The phases: the storm, and the data phases alone and under the flood.

use super::*;

impl<'a> FloodGen<'a> {
    /// Storm: prepared initiations through a window per worker.
    pub(super) fn storm_phase(&mut self, opts: &FloodOptions) -> Result<Storm, BenchError> {
        let w = self.wan.len();
        let total = opts.storm_per_worker * w;
        // Prepared ahead, round-robin over the peers; each lands on its peer's queue.
        let mut pending: Vec<VecDeque<Buffer>> = (0..w).map(|_| VecDeque::new()).collect();
        let mut raw: Vec<Vec<(Vec<u8>, SocketAddrV4)>> = vec![Vec::new(); w];
        let npeers = self.storm.len();
        for k in 0..total {
            let i = k % npeers;
            let p = &mut self.storm[i];
            p.skew_ns += STEP_NS;
            let now = Timestamp::from_nanos(1 + self.epoch.elapsed().as_nanos() as u64 + p.skew_ns);
            p.dev
                .initiate(now, &mut OsRng, p.conc, &mut self.out)
                .map_err(|e| BenchError::Run(format!("storm peer {i}: initiation: {e:?}")))?;
            let t = self.out.transmits.pop().ok_or_else(|| BenchError::Run("storm: no initiation".into()))?;
            self.out.clear();
            let msg = t.payload().to_vec();
            let sender = u32::from_le_bytes(msg[4..8].try_into().unwrap_or_default());
            if !self.storm_open.insert((i, sender)) {
                return Err(BenchError::Run("storm: a sender index came twice".into()));
            }
            raw[p.queue].push((msg, p.endpoint));
        }
        let before = self.snapshot();
        let mut sent = 0u64;
        let mut in_flight = vec![0usize; w];
        let mut answered_seen = vec![0u64; w];
        let mut raw: Vec<std::vec::IntoIter<(Vec<u8>, SocketAddrV4)>> =
            raw.into_iter().map(|r| r.into_iter()).collect();
        self.storm_answered_per_q = vec![0; w];
        self.storm_last_cpu = vec![None; w];
        self.storm_cookies = 0;
        let cpu0: Vec<u64> = self.clocks.iter().map(|c| c.now_ns().unwrap_or(0)).collect();
        let t0 = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_answered = 0;
        loop {
            for q in 0..w {
                in_flight[q] = in_flight[q].saturating_sub((self.storm_answered_per_q[q] - answered_seen[q]) as usize);
                answered_seen[q] = self.storm_answered_per_q[q];
                while in_flight[q] < WINDOW {
                    let Some((msg, from)) = raw[q].next() else { break };
                    let Some(b) = self.frame(&msg, from) else { break };
                    pending[q].push_back(b);
                    in_flight[q] += 1;
                }
                if !pending[q].is_empty() {
                    self.staging.extend(pending[q].drain(..));
                    let n = self.staging.len();
                    self.wan[q].tx_burst(&mut self.staging);
                    sent += (n - self.staging.len()) as u64;
                    while let Some(b) = self.staging.pop() {
                        pending[q].push_front(b);
                    }
                }
            }
            let seen = self.poll();
            let answered: u64 = self.storm_answered_per_q.iter().sum::<u64>() + self.storm_cookies;
            if answered >= total as u64 {
                break;
            }
            if answered != last_answered {
                last_answered = answered;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL {
                break;
            }
            self.daemon_gone()?;
            if seen == 0 {
                std::thread::sleep(PACE);
            }
        }
        let wall_ns = t0.elapsed().as_nanos() as u64;
        let after = self.snapshot();
        let per_worker = (0..w)
            .map(|q| {
                let ns = self.storm_last_cpu[q].map_or(0, |c| c.saturating_sub(cpu0[q]));
                (self.storm_answered_per_q[q], ns)
            })
            .collect();
        let answered = self.storm_answered_per_q.iter().sum();
        Ok(Storm {
            sent,
            answered,
            bad_responses: self.storm_bad,
            cookies: self.storm_cookies,
            per_worker,
            wall_ns,
            counters: Counters::between(&before, &after),
        })
    }

    /// Data alone or under the flood, for `opts.seconds` of counted chunks.
    pub(super) fn data_phase(&mut self, opts: &FloodOptions, flood: Option<f64>) -> Result<DataPhase, BenchError> {
        self.d = DataPhase::default();
        let mut before = self.snapshot();
        let mut warmup_dh = 0;
        let target = opts.rate as f64;
        // Flood messages per data packet, from the data rate alone, then adjusted chunk by chunk
        // towards `rate`.
        let mut ratio = flood.map_or(0.0, |alone_pps| (target / alone_pps.max(1.0)).clamp(0.001, 2.0));
        self.rekeying = false;
        let started = Instant::now();
        let mut counting = flood.is_none();
        loop {
            if !counting && self.d.warmup_chunks >= MAX_WARMUP_CHUNKS {
                counting = true;
            }
            if counting && flood.is_some() && !self.rekeying {
                // The flood has settled: the counted chunks start; the established peers rekey,
                // the retry peers start.
                let now = self.snapshot();
                warmup_dh = Counters::between(&before, &now).dh_operations;
                before = now;
                self.rekeying = true;
                for p in &mut self.established {
                    p.owe_initiation = true;
                    p.completed = false;
                }
                for p in &mut self.retry {
                    p.owe_initiation = true;
                }
            }
            let cookies_before = self.d.cookies_received[0];
            let (wall_ns, flood_sent) = self.one_chunk(ratio, counting, false)?;
            // Under load: most of the chunk's valid-MAC1 initiations got a cookie reply.
            let under_load = (self.d.cookies_received[0] - cookies_before) * 2 >= flood_sent;
            if !counting {
                self.d.warmup_chunks += 1;
                self.d.warmup_ns += wall_ns;
            }
            // The rate a worker sees: per second of its CPU time (what it would be on cores of
            // their own, whatever else runs on this machine).
            let w = self.wan.len() as f64;
            let (busy_ns, _, busy_flood) = self.last_busy;
            if counting && flood.is_some() {
                self.d.counted_chunks += 1;
                self.d.not_under_load += u32::from(!under_load);
                // Data alone right after, measured the same way: the pair sees the same machine
                // (other load, caches, the generator's pace), which the phases seconds apart do
                // not. The flood's load (a second, the kernel's rule) outlasts the chunk. No
                // initiation goes in it, and it does not count as a chunk for the rekeys' and
                // retries' schedule.
                self.one_chunk(0.0, false, true)?;
                let (paired_ns, paired_data, _) = self.last_busy;
                self.d.paired_busy_cpu_ns += paired_ns;
                self.d.paired_busy_data += paired_data;
            }
            // While the workers had a backlog. A chunk in which none was seen (the workers kept
            // up with the generator: with two workers it shares their cores) says nothing of
            // the rate a busy worker sees: the flood's share stays as it was. (Its rate over the
            // whole drain, idle polling included, would read low and double the next chunk's
            // flood, overshooting the target in the chunks that are measured.) If none ever
            // shows a busy stretch, the share stays at its starting estimate and the report
            // gives the rate reached.
            let achieved = (busy_ns > 0 && busy_flood > 0.0).then(|| busy_flood * 1e9 / (busy_ns as f64 / w));
            if let (Some(_), Some(achieved)) = (flood, achieved) {
                if under_load && (0.8..=1.25).contains(&(achieved / target)) {
                    counting = true;
                }
                ratio = (ratio * (target / achieved.max(1.0)).clamp(0.5, 2.0)).clamp(0.001, 2.0);
            }
            let counted_s = self.d.wall_ns as f64 / 1e9;
            let rekeyed = flood.is_none()
                || (self.d.rekeys_completed >= self.established.len()
                    && self.d.retry_handshakes as usize >= self.retry.len());
            if counted_s >= opts.seconds && rekeyed {
                break;
            }
            if flood.is_some() && self.d.chunks as usize > REKEY_CHUNKS && counted_s >= opts.seconds {
                break;
            }
            if started.elapsed() > Duration::from_secs_f64(opts.seconds * 20.0 + 30.0) {
                break;
            }
        }
        self.rekeying = false;
        let after = self.snapshot();
        let mut d = std::mem::take(&mut self.d);
        d.counters = Counters::between(&before, &after);
        d.warmup_dh = warmup_dh;
        Ok(d)
    }

    /// Build one chunk (data, and `ratio` flood messages per data packet), release it, wait until
    /// every data packet is out. Returns the drain's wall ns and the valid-MAC1 initiations sent.
    /// A `paired` chunk (data alone after a counted flood chunk) carries no initiation and leaves
    /// the chunk count alone.
    pub(super) fn one_chunk(&mut self, ratio: f64, counted: bool, paired: bool) -> Result<(u64, u64), BenchError> {
        let w = self.wan.len();
        let mut data: Vec<VecDeque<Buffer>> = (0..w).map(|_| VecDeque::new()).collect();
        let n = self.established.len();
        for k in 0..CHUNK {
            let i = k % n;
            let seq = self.established[i].next_seq;
            let b = self.data_packet(i, seq).ok_or_else(|| BenchError::Run(format!("peer {i}: could not seal")))?;
            self.established[i].next_seq += 1;
            data[self.established[i].queue].push_back(b);
        }
        let mut flood: Vec<VecDeque<Buffer>> = (0..w).map(|_| VecDeque::new()).collect();
        let mut flood_sent = 0u64;
        let mut valid_per_q = vec![0usize; w];
        if ratio > 0.0 {
            let nf = ((CHUNK as f64 * ratio) as usize).clamp(1, MAX_FLOOD_PER_CHUNK * 4 / 5);
            for k in 0..nf {
                let src = self.flood_next;
                self.flood_next = self.flood_next.wrapping_add(1);
                let msg = self.flood_pool[src % self.flood_pool.len()].clone();
                let b = self.frame(&msg, addr(Role::Flood, src % 65_000)).ok_or_else(pool_empty)?;
                flood[k % w].push_back(b);
                valid_per_q[k % w] += 1;
                flood_sent += 1;
                if k % 4 == 3 {
                    let j = self.junk_next;
                    self.junk_next = self.junk_next.wrapping_add(1);
                    let msg = self.junk_pool[j % self.junk_pool.len()].clone();
                    let b = self.frame(&msg, addr(Role::Junk, j % 65_000)).ok_or_else(pool_empty)?;
                    flood[(k / 4) % w].push_back(b);
                    self.d.junk += 1;
                }
            }
            self.d.flood_initiations += flood_sent;
        }
        if self.rekeying && !paired {
            // Initiations owed: the retry peers and the established peers.
            for i in 0..self.retry.len() {
                let p = &self.retry[i];
                let stale = !p.completed && self.chunk_index.saturating_sub(p.initiated_at) > 8;
                if p.owe_initiation || stale {
                    let had_cookie = p.has_cookie;
                    if let Some((q, b, _)) = self.initiation(Role::Retry, i) {
                        flood[q].push_back(b);
                        if had_cookie {
                            self.d.retries_with_mac2 += 1;
                        }
                    }
                }
            }
            for i in 0..self.established.len() {
                let p = &self.established[i];
                let stale = !p.completed && self.chunk_index.saturating_sub(p.initiated_at) > 8;
                if p.owe_initiation || stale {
                    if let Some((q, b, _)) = self.initiation(Role::Established, i) {
                        flood[q].push_back(b);
                        self.d.rekey_initiations += 1;
                    }
                }
            }
        }
        // Interleave the flood evenly into each queue's data.
        let mut chunk: Vec<VecDeque<Buffer>> = Vec::with_capacity(w);
        let mut shares = Vec::with_capacity(w);
        for ((mut dq, mut fq), valid) in data.into_iter().zip(flood).zip(valid_per_q) {
            let total = dq.len() + fq.len();
            shares.push((dq.len() as f64 / total.max(1) as f64, valid as f64 / total.max(1) as f64));
            let mut merged = VecDeque::with_capacity(total);
            let (nd, nf) = (dq.len().max(1), fq.len());
            let mut acc = 0usize;
            while let Some(b) = dq.pop_front() {
                merged.push_back(b);
                acc += nf;
                while acc >= nd {
                    acc -= nd;
                    if let Some(f) = fq.pop_front() {
                        merged.push_back(f);
                    }
                }
            }
            merged.extend(fq.drain(..));
            chunk.push(merged);
        }
        if !paired {
            self.chunk_index += 1;
        }
        let wall = self.drain(&mut chunk, &shares, CHUNK as u64, counted)?;
        if !paired {
            self.d.chunks += 1;
        }
        if counted {
            self.d.counted_flood += flood_sent;
        }
        Ok((wall, flood_sent))
    }
}
