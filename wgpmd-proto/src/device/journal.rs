//! The configuration changes made to one copy of a [`super::Device`]'s tables since it was last
//! published, for [`super::Published`] to replay on the other copy.
//!
//! Bounded: past [`MAX_OPS`] changes the journal stops recording and says so, and the other
//! copy is rebuilt by cloning the published one (cheaper than replaying that many changes: the
//! tables are flat arrays and maps of plain values). The ids of peers added and removed are
//! always kept (4 bytes per peer changed) for the daemon, which must forget removed peers'
//! notifications and make room for new ones.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Peer, PeerId};
use crate::noise::Identity;

/// Most changes replayed one by one; a larger commit clones the tables instead.
pub(crate) const MAX_OPS: usize = 1 << 16;

/// One change to the configuration tables.
pub(crate) enum TableOp {
    /// The private key (the identity carries its generation, so both copies share it).
    Identity(Option<Identity>),
    Mtu(usize),
    MaxPeers(usize),
    /// A new peer in its slot (`peer.id()`), with its key in the map.
    AddPeer(Arc<Peer>),
    /// A peer out of its slot, the key map and the allowed IPs.
    RemovePeer(PeerId),
    AllowedInsert(IpAddr, u8, PeerId),
    AllowedClear(PeerId),
    /// Ids freed by earlier commits become reusable.
    ReleaseFreed,
}

/// Peers added and removed by a commit, in order (an id may appear in both: removed, then
/// reused by a new peer, or the other way round).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Ids given to new peers.
    pub added: Vec<PeerId>,
    /// Ids of removed peers.
    pub removed: Vec<PeerId>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
    /// `later` happened after `self`.
    pub(crate) fn append(&mut self, mut later: Changes) {
        self.added.append(&mut later.added);
        self.removed.append(&mut later.removed);
    }
}

pub(crate) struct Journal {
    on: bool,
    pub(crate) ops: Vec<TableOp>,
    /// More than [`MAX_OPS`] changes: `ops` was given up.
    pub(crate) overflowed: bool,
    pub(crate) changes: Changes,
    /// Changes published by a dropped [`super::WriteGuard`], for the next publish to return.
    pub(crate) stash: Changes,
}

impl Journal {
    /// Records nothing (a device used directly, not through [`super::Published`]).
    pub(crate) fn off() -> Self {
        Journal {
            on: false,
            ops: Vec::new(),
            overflowed: false,
            changes: Changes::default(),
            stash: Changes::default(),
        }
    }
    pub(crate) fn on() -> Self {
        Journal { on: true, ..Journal::off() }
    }
    /// Whether [`Journal::record`] would keep a change (it is on and has not overflowed).
    pub(crate) fn recording(&self) -> bool {
        self.on && !self.overflowed
    }
    pub(crate) fn record(&mut self, op: TableOp) {
        if !self.on || self.overflowed {
            return;
        }
        if self.ops.len() >= MAX_OPS {
            self.overflowed = true;
            self.ops = Vec::new();
            return;
        }
        self.ops.push(op);
    }
    pub(crate) fn added(&mut self, id: PeerId) {
        if self.on {
            self.changes.added.push(id);
        }
    }
    pub(crate) fn removed(&mut self, id: PeerId) {
        if self.on {
            self.changes.removed.push(id);
        }
    }
    /// Everything recorded, leaving the journal empty (and on).
    pub(crate) fn take(&mut self) -> Journal {
        std::mem::replace(self, Journal::on())
    }
}
