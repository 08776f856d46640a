//! One sale's waitlist in memory (CO-9, CO-10): the buyers waiting for a freed unit, by join
//! sequence, mirroring the rules of [`flashsale_core::Waitlist`].
//!
//! It lives inside the sale's book state and is only touched under the book's lock, so a join
//! is decided against the same figures and clock reading as purchases. Each entry has the
//! sequence number its join row has on disk (`waitlist.seq`): the order survives a restart,
//! and an entry taken off for an offer whose write then fails goes back at its own place.
//!
//! An entry whose join or leave is being written is *pending*: it counts for positions (its
//! joiner was answered nothing yet), but a release that would reach it waits for its write to
//! settle rather than offer past it or to it. A buyer taken off by an offer whose write is in
//! flight is *claimed*: their own join or leave waits until the offer is durable or undone.
//!
//! A position is a rank: the entries before the buyer's sequence, counted by walking the
//! ordered map (linear in the waiters ahead). Only joins and `waitlist_place` pay it, never a
//! purchase or a status read.

use flashsale_core::UserId;
use std::collections::{BTreeMap, HashMap, HashSet};
use time::OffsetDateTime;
use tokio::sync::watch;

/// A list write in flight for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListOp {
    /// The buyer joins: the row is being inserted.
    Join,
    /// The buyer leaves: the row is being marked `left`.
    Leave,
}

/// One buyer on the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiter {
    /// Who waits.
    pub user: UserId,
    /// When they joined.
    pub joined_at: OffsetDateTime,
    /// The write in flight for this entry, if any.
    pub pending: Option<ListOp>,
}

/// A waiter taken off the list by a release (offered a unit, or passed over at the limit),
/// kept so a failed write can put them back at their place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// Their join sequence.
    pub seq: u64,
    /// Who, and when they joined.
    pub user: UserId,
    /// When they joined.
    pub joined_at: OffsetDateTime,
    /// The reservation offered to them, or `None` if they were passed over at the limit.
    pub offer: Option<crate::model::Order>,
}

/// A sale's waitlist (see the module doc).
#[derive(Default)]
pub(crate) struct List {
    entries: BTreeMap<u64, Waiter>,
    seqs: HashMap<UserId, u64>,
    next_seq: u64,
    pending_joins: usize,
    claimed: HashSet<UserId>,
    /// Dropped (which wakes every receiver) whenever a list write or a claim ends.
    settled: Option<watch::Sender<()>>,
    /// Joins ever made durable (history rows), for the summary.
    joins: u64,
}

impl List {
    /// Restores a durable join row read back at open; `waiting` rows go back on the list.
    pub fn restore(&mut self, seq: u64, user: UserId, joined_at: OffsetDateTime, waiting: bool) {
        self.joins += 1;
        self.next_seq = self.next_seq.max(seq + 1);
        if waiting {
            self.seqs.insert(user.clone(), seq);
            self.entries.insert(
                seq,
                Waiter {
                    user,
                    joined_at,
                    pending: None,
                },
            );
        }
    }

    /// Buyers waiting as the disk says: joins made durable, and those an offer in flight took
    /// off still counted until the offer is durable (a crash would put them back), so a status
    /// read never shows a list the disk does not hold.
    pub fn len(&self) -> usize {
        self.entries.len() - self.pending_joins + self.claimed.len()
    }

    /// Joins ever made durable.
    pub fn joins(&self) -> u64 {
        self.joins
    }

    /// The buyer's sequence and entry, if they are on the list.
    pub fn entry(&self, user: &UserId) -> Option<(u64, &Waiter)> {
        let seq = *self.seqs.get(user)?;
        self.entries.get(&seq).map(|w| (seq, w))
    }

    /// The place of the entry `seq` (1 is next): one more than the entries before it.
    pub fn position(&self, seq: u64) -> usize {
        self.entries.range(..seq).count() + 1
    }

    /// Whether an offer in flight took `user` off the list.
    pub fn is_claimed(&self, user: &UserId) -> bool {
        self.claimed.contains(user)
    }

    /// A channel closed when the next list write or claim ends.
    pub fn settled(&mut self) -> watch::Receiver<()> {
        self.settled
            .get_or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Puts `user` at the end, pending their join's write; returns the sequence.
    pub fn begin_join(&mut self, user: UserId, joined_at: OffsetDateTime) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending_joins += 1;
        self.seqs.insert(user.clone(), seq);
        self.entries.insert(
            seq,
            Waiter {
                user,
                joined_at,
                pending: Some(ListOp::Join),
            },
        );
        seq
    }

    /// Marks the entry `seq` as leaving, pending its write.
    pub fn begin_leave(&mut self, seq: u64) {
        if let Some(w) = self.entries.get_mut(&seq) {
            w.pending = Some(ListOp::Leave);
        }
    }

    /// Ends the write of `op` for the entry `seq`: durable or not.
    pub fn finish(&mut self, seq: u64, op: ListOp, durable: bool) {
        if op == ListOp::Join {
            self.pending_joins = self.pending_joins.saturating_sub(1);
            if durable {
                self.joins += 1;
            }
        }
        let gone = matches!((op, durable), (ListOp::Join, false) | (ListOp::Leave, true));
        if gone {
            if let Some(w) = self.entries.remove(&seq) {
                self.seqs.remove(&w.user);
            }
        } else if let Some(w) = self.entries.get_mut(&seq) {
            w.pending = None;
        }
        drop(self.settled.take());
    }

    /// The waiters in join order, for a release to walk.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Waiter)> {
        self.entries.iter().map(|(seq, w)| (*seq, w))
    }

    /// Takes the entry `seq` off the list for an offer (or a pass) whose write is in flight.
    pub fn claim(&mut self, seq: u64) -> Option<Waiter> {
        let w = self.entries.remove(&seq)?;
        self.seqs.remove(&w.user);
        self.claimed.insert(w.user.clone());
        Some(w)
    }

    /// Ends a claim: durable (the buyer stays off), or not (back at their place).
    pub fn finish_claim(&mut self, claim: &Claim, durable: bool) {
        self.claimed.remove(&claim.user);
        if !durable {
            self.seqs.insert(claim.user.clone(), claim.seq);
            self.entries.insert(
                claim.seq,
                Waiter {
                    user: claim.user.clone(),
                    joined_at: claim.joined_at,
                    pending: None,
                },
            );
        }
        drop(self.settled.take());
    }
}
