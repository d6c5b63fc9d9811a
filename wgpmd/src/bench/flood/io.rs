//! The generator's rings: draining a chunk, polling the outputs, checking what comes out.

use super::*;

impl<'a> FloodGen<'a> {
    /// Release a chunk and wait until `expect` data packets came out (or it stalls).
    ///
    /// As in `wgpmd bench`, the rates count only the stretch in which each worker provably had
    /// work: from the first sample after the last push to the last sample that still saw
    /// [`BACKLOG`] entries waiting in its input ring, each sample reading the worker's CPU clock
    /// and the ring at one moment. What the worker took meanwhile is split into data and
    /// valid-MAC1 flood by their `shares` of that queue's chunk (they are interleaved evenly).
    /// The generator waking late (this machine is shared) then costs the worker nothing.
    /// Returns the drain's wall ns; a `counted` drain adds its packets, wall time, the workers'
    /// CPU time and the busy stretches to the phase's totals.
    pub(super) fn drain(
        &mut self,
        chunk: &mut [VecDeque<Buffer>],
        shares: &[(f64, f64)],
        expect: u64,
        counted: bool,
    ) -> Result<u64, BenchError> {
        let w = self.wan.len();
        let mut first: Vec<Option<(u64, usize)>> = vec![None; w];
        let mut last: Vec<Option<(u64, usize)>> = vec![None; w];
        let delivered0 = self.delivered;
        let cpu0 = cpu::sum_ns(&self.clocks);
        let t0 = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_mark = (0, 0);
        loop {
            let mut pushing = false;
            for (q, pending) in chunk.iter_mut().enumerate() {
                if pending.is_empty() {
                    continue;
                }
                pushing = true;
                let take = BURST.min(pending.len());
                self.staging.extend(pending.drain(..take));
                self.wan[q].tx_burst(&mut self.staging);
                while let Some(b) = self.staging.pop() {
                    pending.push_front(b);
                }
            }
            let backlog: usize = self.wan.iter().map(|q| q.tx_pending()).sum();
            if !pushing {
                for q in 0..w {
                    let before = self.wan[q].tx_pending();
                    if before < BACKLOG {
                        continue;
                    }
                    let Some(cpu) = self.clocks[q].now_ns() else { continue };
                    let after = self.wan[q].tx_pending();
                    // Clock and ring read at one moment, or the sample is skipped.
                    if before - after > BURST {
                        continue;
                    }
                    first[q].get_or_insert((cpu, after));
                    last[q] = Some((cpu, after));
                }
            }
            if !pushing && backlog < BURST {
                self.poll();
            }
            let delivered = self.delivered - delivered0;
            if !pushing && delivered >= expect {
                break;
            }
            if (delivered, backlog) != last_mark {
                last_mark = (delivered, backlog);
                last_progress = Instant::now();
            } else if last_progress.elapsed() > STALL {
                self.d.lost += expect.saturating_sub(delivered);
                break;
            }
            self.daemon_gone()?;
            if !pushing && backlog >= BURST {
                std::thread::sleep(PACE);
            }
        }
        let wall = t0.elapsed().as_nanos() as u64;
        let cpu1 = cpu::sum_ns(&self.clocks);
        let (Some(cpu0), Some(cpu1)) = (cpu0, cpu1) else {
            return Err(BenchError::Run("a worker thread exited during the measurement".into()));
        };
        let mut busy = (0u64, 0f64, 0f64);
        for q in 0..w {
            if let (Some((c0, a0)), Some((c1, a1)), Some(&(data, flood))) = (first[q], last[q], shares.get(q)) {
                let taken = a0.saturating_sub(a1) as f64;
                busy.0 += c1.saturating_sub(c0);
                busy.1 += taken * data;
                busy.2 += taken * flood;
            }
        }
        if counted {
            self.d.packets += self.delivered - delivered0;
            self.d.cpu_ns += cpu1.saturating_sub(cpu0);
            self.d.wall_ns += wall;
            self.d.busy_cpu_ns += busy.0;
            self.d.busy_data += busy.1;
            self.d.busy_flood += busy.2;
        }
        self.last_busy = busy;
        for q in chunk.iter_mut() {
            q.clear();
        }
        Ok(wall)
    }

    /// Receive and handle what both ports have for the generator; returns the frames seen.
    pub(super) fn poll(&mut self) -> usize {
        let mut seen = 0;
        let mut rxv = std::mem::take(&mut self.rxv);
        for q in 0..self.inner.len() {
            loop {
                self.inner[q].rx_burst(&self.pool, &mut rxv, BURST);
                if rxv.is_empty() {
                    break;
                }
                seen += rxv.len();
                for b in rxv.drain(..) {
                    self.inner_in(&b);
                }
            }
        }
        let mut replies = Vec::new();
        for q in 0..self.wan.len() {
            loop {
                self.wan[q].rx_burst(&self.pool, &mut rxv, BURST);
                if rxv.is_empty() {
                    break;
                }
                seen += rxv.len();
                let cpu = self.clocks[q].now_ns();
                for b in rxv.drain(..) {
                    if let Some(r) = self.wan_frame(q, b, cpu) {
                        replies.push((q, r));
                    }
                }
            }
        }
        self.rxv = rxv;
        for (q, b) in replies {
            self.send_now(q, vec![b]);
        }
        seen
    }

    /// A decrypted packet from the inner port: an established peer's data or probe.
    pub(super) fn inner_in(&mut self, b: &Buffer) {
        let d = b.data();
        let peer = d.get(28..32).map(|p| u32::from_be_bytes(p.try_into().unwrap_or_default()) as usize);
        let Some(p) = peer.and_then(|i| self.established.get_mut(i)) else {
            self.d.damaged += 1;
            return;
        };
        match matches(&p.template, d) {
            Some(u64::MAX) => p.confirmed = true,
            Some(seq) => {
                if seq != p.expect_seq {
                    self.d.damaged += 1;
                }
                p.expect_seq = seq + 1;
                self.delivered += 1;
            }
            None => self.d.damaged += 1,
        }
    }

    /// A frame from the concentrator's WAN port on queue `q` (`cpu`: that worker's CPU clock
    /// when the burst was taken). Returns a frame to send back (an ARP reply).
    pub(super) fn wan_frame(&mut self, q: usize, mut b: Buffer, cpu: Option<u64>) -> Option<Buffer> {
        let d = b.data();
        if d.len() >= 42 && d[12..14] == [8, 6] {
            let target = Ipv4Addr::new(d[38], d[39], d[40], d[41]);
            let gw = Wan {
                mac: self.mac,
                v4: Some(WanAddr { addr: target, prefix: 16, gateway: None }),
                v6: None,
                vlan: None,
            };
            let len = gw.arp_reply_in_place(b.data_mut())?;
            b.truncate(len);
            return Some(b);
        }
        if d.len() < 42 + 4 || d[12..14] != [8, 0] || d[14] != 0x45 || d[23] != 17 {
            return None;
        }
        let dst = Ipv4Addr::new(d[30], d[31], d[32], d[33]);
        let udp_len = usize::from(u16::from_be_bytes([d[38], d[39]]));
        let msg = d.get(42..34 + udp_len)?;
        if msg.is_empty() {
            return None;
        }
        let (role, i) = role_of(dst)?;
        let ty = msg[0];
        let now_real = self.epoch.elapsed().as_nanos() as u64;
        match role {
            Role::Storm => match (ty, msg.len()) {
                (2, RESPONSE_LEN) => {
                    let receiver = u32::from_le_bytes(msg[8..12].try_into().ok()?);
                    if self.storm_open.remove(&(i, receiver)) {
                        self.storm_answered_per_q[q] += 1;
                        if cpu.is_some() {
                            self.storm_last_cpu[q] = cpu;
                        }
                    } else {
                        self.storm_bad += 1;
                    }
                }
                (3, COOKIE_REPLY_LEN) => self.storm_cookies += 1,
                _ => {}
            },
            Role::Flood | Role::Junk => match ty {
                2 => self.d.unexpected_responses += 1,
                3 => self.d.cookies_received[0] += 1,
                _ => {}
            },
            Role::Retry | Role::Established => {
                let src = SocketAddr::V4(SocketAddrV4::new(CONC_IP, PORT));
                let p = if role == Role::Retry { self.retry.get_mut(i)? } else { self.established.get_mut(i)? };
                let now = Timestamp::from_nanos(1 + now_real + p.skew_ns);
                if ty == 4 {
                    // A keepalive (the concentrator's confirmation or a passive keepalive).
                    return None;
                }
                let r = p.dev.receive_handshake(now, &mut OsRng, src, msg, false, &mut self.out);
                self.out.clear();
                let slot = if role == Role::Retry { 1 } else { 2 };
                match r {
                    Ok(HandshakeOutcome::Completed(_)) => {
                        p.completed = true;
                        if role == Role::Retry {
                            self.d.retry_handshakes += 1;
                        } else if self.rekeying {
                            self.d.rekeys_completed += 1;
                        }
                    }
                    Ok(HandshakeOutcome::CookieStored(_)) => {
                        self.d.cookies_received[slot] += 1;
                        p.owe_initiation = true;
                        p.has_cookie = true;
                    }
                    _ => {}
                }
            }
        }
        None
    }
}
