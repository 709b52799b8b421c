//! Sequenced events: where an event sits in its namespace's log, and how a receiver tells a
//! gap, a duplicate or a reset from an event that simply comes next.
//!
//! A *sequenced* L2 store (see [`crate::L2Store::sequenced`]) gives every announced change a
//! position in each namespace it touches, in the same atomic step as the change: the
//! namespace's log *epoch* (a number that changes when the log is lost, e.g. a Redis that
//! restarted empty) and a *sequence number*, 1, 2, 3, ... within that epoch. The change's event
//! is appended to the namespace's bounded log under that number and published with its
//! positions as its last field, `"pos":[["gpu_avail",<epoch>,<seq>],...]`.
//!
//! A receiver keeps one [`LogCursor`] per namespace. Events may arrive late, twice or out of
//! order; the cursor records which numbers were applied and reports the ones missing, so the
//! node can read exactly those back from the log ([`crate::L2Store::read_log`]) instead of
//! dropping its whole L1. Applying an event only ever *removes* entries from L1, so applying one
//! twice, or late, never lets an older value win: the cursor exists to find what was missed.
//!
//! ```
//! use cache_core::log::{LogCursor, Observed};
//!
//! // Following epoch 7, nothing applied yet (what a node reads from the log at start).
//! let mut cursor = LogCursor::at(7, 0);
//! assert_eq!(cursor.observe(7, 1), Observed::InOrder);
//! assert_eq!(cursor.observe(7, 4), Observed::Gap { from: 2, to: 3 });
//! assert_eq!(cursor.observe(7, 2), Observed::InOrder);
//! assert_eq!(cursor.missing(), Some((3, 3)));
//! assert_eq!(cursor.observe(7, 3), Observed::InOrder);
//! assert_eq!(cursor.applied(), 4, "4 was applied early; 2 and 3 closed the gap");
//! assert_eq!(cursor.observe(7, 3), Observed::Duplicate);
//! assert!(matches!(cursor.observe(9, 1), Observed::NewEpoch { .. }));
//! ```

use std::collections::BTreeSet;

use serde::Deserialize;

/// No epoch: what [`LogRead::empty`] reports. Stores give a log an epoch when it is first read
/// (see [`crate::L2Store::read_log`]), so a real log never has this one; a cursor that
/// follows it takes the first epoch it meets as the continuation of nothing (its number 1
/// follows this one's 0 without a gap).
pub const NO_EPOCH: u64 = 0;

/// How many out-of-order positions a cursor remembers above its contiguous mark before it gives
/// up and asks for a flush (see [`Observed::Overflow`]): far more than a healthy transport ever
/// reorders, few enough to bound a cursor's memory.
pub const MAX_AHEAD: usize = 65_536;

/// One event's place in one namespace's log.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogPosition {
    /// The key namespace (`gpu_avail`) whose log this is.
    pub key_namespace: String,
    /// The log's epoch (never [`NO_EPOCH`] for a real event).
    pub epoch: u64,
    /// The sequence number within the epoch, from 1.
    pub seq: u64,
}

impl LogPosition {
    /// Position `seq` of epoch `epoch` in `key_namespace`'s log.
    pub fn new(key_namespace: impl Into<String>, epoch: u64, seq: u64) -> Self {
        Self {
            key_namespace: key_namespace.into(),
            epoch,
            seq,
        }
    }
}

/// The positions a sequenced store appended to an event it published: the `"pos"` field,
/// which the store writes last. Read from the tail of the message alone, so a node can track
/// the positions of its own events (which it hears back and does not otherwise decode) for the
/// cost of parsing a few dozen bytes.
///
/// Returns `None` when the message carries no positions (an unsequenced store, a seed node) or
/// they do not parse. A string value cannot contain the bytes `,"pos":` (its quote would be
/// escaped), and the store writes the field after every other, so the last occurrence is the
/// top-level field.
///
/// ```
/// use cache_core::log::{positions_in_tail, LogPosition};
///
/// let msg = br#"{"source_node":"a","data":{"pos":1},"pos":[["gpu_avail",5,12]]}"#;
/// assert_eq!(positions_in_tail(msg), Some(vec![LogPosition::new("gpu_avail", 5, 12)]));
/// assert_eq!(positions_in_tail(br#"{"source_node":"a"}"#), None);
/// ```
pub fn positions_in_tail(message: &[u8]) -> Option<Vec<LogPosition>> {
    let start = tail_start(message)?.checked_add(POS_FIELD.len())?;
    let body = message.get(start..)?.strip_suffix(b"}")?;
    parse_positions(body)
}

/// The field a store appends, with its leading comma.
const POS_FIELD: &[u8] = b",\"pos\":";

/// Where the `,"pos":` field a store appended starts in `message`, if it has one (the last
/// occurrence: see [`positions_in_tail`]). What comes before it is the event as its issuer
/// published it, without the closing brace.
pub fn tail_start(message: &[u8]) -> Option<usize> {
    message
        .windows(POS_FIELD.len())
        .rposition(|w| w == POS_FIELD)
}

/// `event` (an encoded event, ending in its closing brace) with `,"pos":[...]` for
/// `positions` put before that brace: what a sequenced store publishes and logs. An `event`
/// that does not end in `}` is returned unchanged (a store must not announce it as sequenced).
///
/// ```
/// use cache_core::log::{splice_positions, LogPosition};
///
/// let out = splice_positions(br#"{"source_node":"a"}"#, &[LogPosition::new("ns", 3, 4)]);
/// assert_eq!(out, br#"{"source_node":"a","pos":[["ns",3,4]]}"#);
/// ```
pub fn splice_positions(event: &[u8], positions: &[LogPosition]) -> Vec<u8> {
    let Some(body) = event.strip_suffix(b"}") else {
        return event.to_vec();
    };
    let mut out = Vec::with_capacity(event.len() + 16 + 40 * positions.len());
    out.extend_from_slice(body);
    push_positions(&mut out, positions);
    out.push(b'}');
    out
}

/// Parses a `"pos"` value: `[["ns",epoch,seq],...]`.
pub(crate) fn parse_positions(json: &[u8]) -> Option<Vec<LogPosition>> {
    let raw: Vec<WirePosition> = serde_json::from_slice(json).ok()?;
    Some(raw.into_iter().map(WirePosition::into_position).collect())
}

/// A position as it travels: `["ns", epoch, seq]`.
#[derive(Deserialize)]
pub(crate) struct WirePosition(String, u64, u64);

impl WirePosition {
    pub(crate) fn into_position(self) -> LogPosition {
        LogPosition::new(self.0, self.1, self.2)
    }
}

/// Appends `,"pos":[...]` for `positions` (nothing when there are none), as a sequenced store
/// writes it before an event's closing brace.
pub(crate) fn push_positions(out: &mut Vec<u8>, positions: &[LogPosition]) {
    use std::io::Write as _;
    if positions.is_empty() {
        return;
    }
    out.extend_from_slice(b",\"pos\":[");
    for (i, p) in positions.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        // Writing to a Vec cannot fail.
        serde_json::to_writer(&mut *out, &p.key_namespace).unwrap_or_default();
        let _ = write!(out, ",{},{}]", p.epoch, p.seq);
    }
    out.push(b']');
}

/// What one namespace's log holds, as [`crate::L2Store::read_log`] read it in one step.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// The log's epoch; [`NO_EPOCH`] when the namespace has no log yet.
    pub epoch: u64,
    /// The last sequence number given out in this epoch (0 with [`NO_EPOCH`]).
    pub head: u64,
    /// The first sequence number the log still holds; `head + 1` when it holds none. Entries
    /// below it were trimmed away: a reader that needs them cannot replay, only flush.
    pub first: u64,
    /// The entries after the position asked for, in order, up to the limit asked for: each its
    /// sequence number and the message as it was published, carrying at least its position in
    /// this log (a change that touched several namespaces may carry only this one's: the others
    /// are in their own logs).
    pub entries: Vec<(u64, Vec<u8>)>,
}

impl LogRead {
    /// A read of an epoch's log.
    pub fn new(epoch: u64, head: u64, first: u64, entries: Vec<(u64, Vec<u8>)>) -> Self {
        Self {
            epoch,
            head,
            first,
            entries,
        }
    }

    /// The read of a namespace that has no log yet.
    pub fn empty() -> Self {
        Self::new(NO_EPOCH, 0, 1, Vec::new())
    }
}

/// What a [`LogCursor`] made of one observed position.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The next number, or one that fills a gap: nothing is missing below it now that was not
    /// missing before.
    InOrder,
    /// Already applied (a duplicate, or a replayed event that pub/sub also delivered).
    Duplicate,
    /// Applied, but `from..=to` are missing below it: read them back from the log.
    Gap {
        /// The first missing number.
        from: u64,
        /// The last missing number.
        to: u64,
    },
    /// A position in another epoch than the cursor's: the log was lost (a store reset, an
    /// eviction, another server behind the same address). Whatever this namespace's L1 holds
    /// may be older than changes the log no longer has: drop it. The cursor now follows the
    /// new epoch, with everything before `seq` counted as covered by that drop.
    NewEpoch {
        /// The epoch followed until now (`None` if the cursor knew none).
        previous: Option<u64>,
    },
    /// Too many positions arrived out of order to keep track of: drop the namespace's L1; the
    /// cursor has jumped to the highest number seen.
    Overflow,
}

/// What a [`LogCursor`] made of a log's head, read in one step with its entries.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadCheck {
    /// Everything up to the head was applied.
    UpToDate,
    /// `from..=to` are missing and the log still holds them: replay them.
    Behind {
        /// The first missing number.
        from: u64,
        /// The head.
        to: u64,
    },
    /// Numbers the log no longer holds are missing (it was trimmed past them): drop the
    /// namespace's L1, then follow the log from its head.
    Trimmed,
    /// The log is in another epoch than the cursor: drop and follow the new epoch.
    NewEpoch,
    /// Same epoch, but the head is below what this cursor applied: the log lost its last
    /// entries (a failover to a replica that had not received them). Drop and follow.
    Regressed,
}

/// A receiver's record of one namespace's log: the epoch it follows, the number up to which
/// everything was applied, and the numbers applied early, above a gap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCursor {
    /// `None` until the cursor learns an epoch (from a read of the log or an event).
    epoch: Option<u64>,
    /// Every number up to this one was applied (or covered by a drop).
    applied: u64,
    /// Numbers above `applied + 1` that were applied early.
    ahead: BTreeSet<u64>,
}

impl LogCursor {
    /// A cursor at `seq` of `epoch`: everything up to `seq` is applied or covered.
    pub fn at(epoch: u64, seq: u64) -> Self {
        Self {
            epoch: Some(epoch),
            applied: seq,
            ahead: BTreeSet::new(),
        }
    }

    /// The epoch followed, if known.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Every number up to this one was applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The highest number applied (at least [`LogCursor::applied`]).
    pub fn highest(&self) -> u64 {
        self.ahead.last().copied().unwrap_or(self.applied)
    }

    /// The first range of numbers missing below the highest applied one, if any.
    pub fn missing(&self) -> Option<(u64, u64)> {
        let next_applied = *self.ahead.first()?;
        Some((self.applied + 1, next_applied - 1))
    }

    /// Follows `epoch` from `seq` on, forgetting everything else: after a drop of the
    /// namespace's L1 has covered whatever came before.
    pub fn restart(&mut self, epoch: u64, seq: u64) {
        *self = Self::at(epoch, seq);
    }

    /// Records that the event at `seq` of `epoch` was applied.
    pub fn observe(&mut self, epoch: u64, seq: u64) -> Observed {
        match self.epoch {
            Some(current) if current == epoch => {}
            // A namespace without a log was at 0 of no epoch: the first epoch follows it, and
            // only the numbers below `seq` in it are missing.
            Some(NO_EPOCH) if self.applied == 0 => {
                self.epoch = Some(epoch);
            }
            previous => {
                self.restart(epoch, seq);
                return Observed::NewEpoch { previous };
            }
        }
        if seq <= self.applied || self.ahead.contains(&seq) {
            return Observed::Duplicate;
        }
        if seq == self.applied + 1 {
            self.applied = seq;
            while self.ahead.first() == Some(&(self.applied + 1)) {
                self.ahead.pop_first();
                self.applied += 1;
            }
            return Observed::InOrder;
        }
        if self.ahead.len() >= MAX_AHEAD {
            let highest = self.highest().max(seq);
            self.restart(epoch, highest);
            return Observed::Overflow;
        }
        // Above a gap. The missing run just below `seq`: from the highest number applied
        // below it, up to `seq - 1`.
        let below = self
            .ahead
            .range(..seq)
            .next_back()
            .copied()
            .unwrap_or(self.applied);
        self.ahead.insert(seq);
        if below + 1 == seq {
            // Right after a number applied early: the gap under it is already known.
            Observed::InOrder
        } else {
            Observed::Gap {
                from: below + 1,
                to: seq - 1,
            }
        }
    }

    /// Compares the cursor with a log's `epoch`, `head` and `first` held number, read in one
    /// step. `seen_before` is [`LogCursor::highest`] as it was before the read was sent: every
    /// number seen by then was given out before the read, so a head below it means the log
    /// went back. Numbers seen since (the cursor may have moved on while the read was on its
    /// way) are newer than the read and say nothing about it.
    pub fn check_head(&self, epoch: u64, head: u64, first: u64, seen_before: u64) -> HeadCheck {
        match self.epoch {
            Some(current) if current == epoch => {}
            Some(NO_EPOCH) if self.applied == 0 => {
                // The log began after this cursor looked: its first numbers must still be held.
                return if head == 0 {
                    HeadCheck::UpToDate
                } else if first <= 1 {
                    HeadCheck::Behind { from: 1, to: head }
                } else {
                    HeadCheck::Trimmed
                };
            }
            _ => return HeadCheck::NewEpoch,
        }
        if head < seen_before {
            return HeadCheck::Regressed;
        }
        // The first number up to the head that was not applied, if any.
        let from = match self.missing() {
            Some((from, _)) if from <= head => from,
            _ if self.applied >= head => return HeadCheck::UpToDate,
            _ if self.ahead.is_empty() => self.applied + 1,
            // Everything up to the head was applied, only numbers above it are missing.
            _ => return HeadCheck::UpToDate,
        };
        if first > from {
            HeadCheck::Trimmed
        } else {
            HeadCheck::Behind { from, to: head }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut c = LogCursor::at(3, 10);
        assert_eq!(c.observe(3, 11), Observed::InOrder);
        assert_eq!(c.observe(3, 11), Observed::Duplicate);
        assert_eq!(c.observe(3, 5), Observed::Duplicate);
        assert_eq!(c.observe(3, 15), Observed::Gap { from: 12, to: 14 });
        assert_eq!(
            c.observe(3, 16),
            Observed::InOrder,
            "the gap is already known"
        );
        assert_eq!(c.observe(3, 20), Observed::Gap { from: 17, to: 19 });
        assert_eq!(c.missing(), Some((12, 14)));
        assert_eq!(c.highest(), 20);
        for seq in 12..=14 {
            assert_eq!(c.observe(3, seq), Observed::InOrder);
        }
        assert_eq!(c.applied(), 16);
        assert_eq!(c.missing(), Some((17, 19)));
        assert_eq!(c.observe(3, 18), Observed::Gap { from: 17, to: 17 });
        assert_eq!(c.observe(3, 17), Observed::InOrder);
        assert_eq!(c.observe(3, 19), Observed::InOrder);
        assert_eq!(c.applied(), 20);
        assert_eq!(c.missing(), None);
    }

    #[test]
    fn reversed_delivery_reports_each_gap_once_and_closes() {
        let mut c = LogCursor::at(1, 0);
        assert_eq!(c.observe(1, 5), Observed::Gap { from: 1, to: 4 });
        assert_eq!(c.observe(1, 4), Observed::Gap { from: 1, to: 3 });
        assert_eq!(c.observe(1, 3), Observed::Gap { from: 1, to: 2 });
        assert_eq!(c.observe(1, 2), Observed::Gap { from: 1, to: 1 });
        assert_eq!(c.observe(1, 1), Observed::InOrder);
        assert_eq!((c.applied(), c.missing()), (5, None));
    }

    #[test]
    fn another_epoch_restarts_the_cursor() {
        let mut c = LogCursor::at(1, 40);
        assert_eq!(c.observe(2, 3), Observed::NewEpoch { previous: Some(1) });
        assert_eq!((c.epoch(), c.applied()), (Some(2), 3));
        assert_eq!(c.observe(2, 4), Observed::InOrder);
        let mut unknown = LogCursor::default();
        assert_eq!(unknown.observe(9, 7), Observed::NewEpoch { previous: None });
    }

    #[test]
    fn the_first_epoch_follows_an_empty_log_without_a_drop() {
        let mut c = LogCursor::at(NO_EPOCH, 0);
        assert_eq!(c.observe(77, 1), Observed::InOrder);
        assert_eq!(c.epoch(), Some(77));
        let mut late = LogCursor::at(NO_EPOCH, 0);
        assert_eq!(late.observe(77, 3), Observed::Gap { from: 1, to: 2 });
        assert_eq!(
            LogCursor::at(NO_EPOCH, 0).check_head(77, 4, 1, 0),
            HeadCheck::Behind { from: 1, to: 4 }
        );
        assert_eq!(
            LogCursor::at(NO_EPOCH, 0).check_head(77, 4, 2, 0),
            HeadCheck::Trimmed
        );
        assert_eq!(
            LogCursor::at(NO_EPOCH, 0).check_head(NO_EPOCH, 0, 1, 0),
            HeadCheck::UpToDate
        );
    }

    #[test]
    fn head_checks() {
        let c = LogCursor::at(4, 10);
        assert_eq!(c.check_head(4, 10, 1, 10), HeadCheck::UpToDate);
        let behind = HeadCheck::Behind { from: 11, to: 13 };
        assert_eq!(c.check_head(4, 13, 5, 10), behind);
        assert_eq!(c.check_head(4, 13, 11, 10), behind);
        assert_eq!(c.check_head(4, 13, 12, 10), HeadCheck::Trimmed);
        assert_eq!(c.check_head(4, 9, 1, 10), HeadCheck::Regressed);
        assert_eq!(
            c.check_head(4, 9, 1, 9),
            HeadCheck::UpToDate,
            "the cursor moved past a read sent before it saw 10"
        );
        assert_eq!(c.check_head(5, 10, 1, 10), HeadCheck::NewEpoch);
        let unknown = LogCursor::default();
        assert_eq!(unknown.check_head(4, 10, 1, 0), HeadCheck::NewEpoch);
        let mut gapped = LogCursor::at(4, 10);
        assert_eq!(gapped.observe(4, 14), Observed::Gap { from: 11, to: 13 });
        let behind = HeadCheck::Behind { from: 11, to: 14 };
        assert_eq!(gapped.check_head(4, 14, 1, 14), behind);
        assert_eq!(gapped.check_head(4, 14, 12, 14), HeadCheck::Trimmed);
        assert_eq!(gapped.check_head(4, 13, 1, 14), HeadCheck::Regressed);
        let behind = HeadCheck::Behind { from: 11, to: 12 };
        assert_eq!(
            gapped.check_head(4, 12, 1, 10),
            behind,
            "14 arrived after the read was sent"
        );
        assert_eq!(
            gapped.check_head(4, 10, 1, 10),
            HeadCheck::UpToDate,
            "only numbers above the head read are missing"
        );
    }

    #[test]
    fn too_much_reordering_asks_for_a_drop() {
        let mut c = LogCursor::at(1, 0);
        for seq in 0..MAX_AHEAD as u64 {
            c.observe(1, 2 + seq * 2);
        }
        assert_eq!(c.observe(1, 1_000_000), Observed::Overflow);
        assert_eq!((c.applied(), c.missing()), (1_000_000, None));
    }

    #[test]
    fn positions_round_trip_through_the_tail() {
        let positions = vec![
            LogPosition::new("gpu_avail", 1_733_600_000_123_456, 12),
            LogPosition::new("odd\"ns", 2, 3),
        ];
        let mut msg = br#"{"source_node":"n","data":{"x":",\"pos\":[]"}"#.to_vec();
        push_positions(&mut msg, &positions);
        msg.push(b'}');
        assert_eq!(positions_in_tail(&msg), Some(positions));
        assert!(serde_json::from_slice::<serde_json::Value>(&msg).is_ok());
        assert_eq!(
            positions_in_tail(b"{\"pos\":[]}"),
            None,
            "not a later field"
        );
        assert_eq!(positions_in_tail(b"{\"a\":1,\"pos\":[[1,2,3]]}"), None);
        assert_eq!(positions_in_tail(b""), None);
    }
}
