//! Unit attentions for nexuses on other nodes (DESIGN.md §4).
//!
//! The writer of a state records each unit attention it establishes for
//! another I_T nexus in the state itself ([`UaLog`], serialized by the PR
//! engine with the rest of the state), each with a sequence number. Every
//! node delivers those addressed to its own views and remembers, locally,
//! the highest sequence number it delivered per nexus ([`Delivered`]).
//!
//! A node that starts (or a view that appears) begins after the log's
//! current end: the view reports POWER ON, RESET, OR BUS DEVICE RESET
//! OCCURRED first anyway, which supersedes what came before. The writer
//! trims the log to a bound; a nexus that was further behind than the trim
//! gets only what is left, which SPC-4 allows when unit attentions overflow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One unit attention for one nexus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UaRecord<N> {
    /// Position in the log: strictly increasing.
    pub seq: u64,
    /// The I_T nexus to tell.
    pub nexus: N,
    /// Additional sense code and qualifier (sense key UNIT ATTENTION).
    pub asc: u8,
    pub ascq: u8,
    /// For every I_T nexus except `nexus` (a LOGICAL UNIT RESET's unit
    /// attention: the nodes do not know each other's nexuses).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub others: bool,
}

impl<N: PartialEq> UaRecord<N> {
    /// Whether the record is for `nexus`.
    pub fn is_for(&self, nexus: &N) -> bool {
        (self.nexus == *nexus) != self.others
    }
}

/// The unit attentions recorded in the LU's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "N: Deserialize<'de>"))]
pub struct UaLog<N> {
    /// The sequence number the next record gets (starts at 1).
    pub next_seq: u64,
    /// Records in increasing `seq`.
    pub records: Vec<UaRecord<N>>,
}

// Not derived: that would demand `N: Default`.
impl<N> Default for UaLog<N> {
    fn default() -> Self {
        UaLog {
            next_seq: 1,
            records: Vec::new(),
        }
    }
}

impl<N: Clone + Ord> UaLog<N> {
    /// Records a unit attention for `nexus` and returns its sequence number.
    pub fn record(&mut self, nexus: N, asc: u8, ascq: u8) -> u64 {
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        self.records.push(UaRecord {
            seq,
            nexus,
            asc,
            ascq,
            others: false,
        });
        seq
    }

    /// Records a unit attention for every nexus except `nexus`.
    pub fn record_others(&mut self, nexus: N, asc: u8, ascq: u8) -> u64 {
        let seq = self.record(nexus, asc, ascq);
        if let Some(r) = self.records.last_mut() {
            r.others = true;
        }
        seq
    }

    /// Keeps only the last `keep` records (the writer calls this so the
    /// state stays bounded).
    pub fn trim(&mut self, keep: usize) {
        let n = self.records.len();
        if n > keep {
            self.records.drain(..n - keep);
        }
    }

    /// The highest sequence number recorded so far (0 if none).
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }
}

/// What this node delivered, per nexus of its own views (local memory,
/// not in the shared state).
#[derive(Debug, Clone)]
pub struct Delivered<N> {
    upto: BTreeMap<N, u64>,
}

impl<N> Default for Delivered<N> {
    fn default() -> Self {
        Delivered {
            upto: BTreeMap::new(),
        }
    }
}

impl<N: Clone + Ord> Delivered<N> {
    /// A new view for `nexus`: it starts after everything already logged.
    pub fn attach(&mut self, nexus: N, log: &UaLog<N>) {
        self.upto.insert(nexus, log.last_seq());
    }

    /// Whether `nexus` is one of ours.
    #[must_use]
    pub fn is_attached(&self, nexus: &N) -> bool {
        self.upto.contains_key(nexus)
    }

    /// The view for `nexus` is gone.
    pub fn detach(&mut self, nexus: &N) {
        self.upto.remove(nexus);
    }

    /// The undelivered unit attentions for `nexus` (one of ours), oldest
    /// first. Empty for a nexus that is not attached here.
    pub fn pending<'a>(
        &self,
        nexus: &'a N,
        log: &'a UaLog<N>,
    ) -> impl Iterator<Item = &'a UaRecord<N>> + 'a {
        let after = self.upto.get(nexus).copied();
        log.records
            .iter()
            .filter(move |r| after.is_some_and(|a| r.seq > a) && r.is_for(nexus))
    }

    /// Marks everything for `nexus` up to `seq` delivered (SPC: a unit
    /// attention is cleared when reported).
    pub fn delivered(&mut self, nexus: &N, seq: u64) {
        if let Some(u) = self.upto.get_mut(nexus) {
            *u = (*u).max(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_node_delivers_its_own_nexuses_once_in_order() {
        let mut log = UaLog::default();
        let (mut node_a, mut node_b) = (Delivered::default(), Delivered::default());
        node_a.attach("i1", &log);
        node_b.attach("i2", &log);
        let s1 = log.record("i1", 0x2a, 0x03); // RESERVATIONS PREEMPTED
        let s2 = log.record("i2", 0x2a, 0x04);
        let s3 = log.record("i1", 0x2a, 0x05);
        assert!(s1 < s2 && s2 < s3);
        let a: Vec<u64> = node_a.pending(&"i1", &log).map(|r| r.seq).collect();
        assert_eq!(a, vec![s1, s3]);
        assert_eq!(node_b.pending(&"i1", &log).count(), 0, "not b's view");
        node_a.delivered(&"i1", s1);
        let a: Vec<u64> = node_a.pending(&"i1", &log).map(|r| r.seq).collect();
        assert_eq!(a, vec![s3]);
        node_a.delivered(&"i1", s3);
        assert_eq!(node_a.pending(&"i1", &log).count(), 0);
        let b: Vec<(u8, u8)> = node_b
            .pending(&"i2", &log)
            .map(|r| (r.asc, r.ascq))
            .collect();
        assert_eq!(b, vec![(0x2a, 0x04)]);
    }

    #[test]
    fn a_record_for_the_others_reaches_everyone_but_its_nexus() {
        let mut log = UaLog::default();
        let (mut a, mut b) = (Delivered::default(), Delivered::default());
        a.attach("i1", &log);
        a.attach("i2", &log);
        b.attach("i3", &log);
        let s = log.record_others("i1", 0x29, 0x03);
        assert_eq!(a.pending(&"i1", &log).count(), 0, "the issuer");
        assert_eq!(
            a.pending(&"i2", &log).map(|r| r.seq).collect::<Vec<_>>(),
            vec![s]
        );
        assert_eq!(
            b.pending(&"i3", &log).map(|r| r.seq).collect::<Vec<_>>(),
            vec![s]
        );
        b.delivered(&"i3", s);
        assert_eq!(b.pending(&"i3", &log).count(), 0);
        // Old states (no `others` field) still decode; plain records do not
        // serialize it.
        let old: UaRecord<String> =
            serde_json::from_str(r#"{"seq":1,"nexus":"x","asc":42,"ascq":3}"#).unwrap();
        assert!(!old.others);
        assert!(!serde_json::to_string(&old).unwrap().contains("others"));
    }

    #[test]
    fn a_new_view_does_not_replay_history_and_trim_keeps_the_newest() {
        let mut log = UaLog::default();
        log.record(1u32, 0x2a, 3);
        let mut d = Delivered::default();
        d.attach(1u32, &log);
        assert_eq!(d.pending(&1, &log).count(), 0);
        let s = log.record(1, 0x2a, 4);
        log.record(2, 0x2a, 4);
        log.trim(2);
        assert_eq!(log.records.len(), 2);
        assert_eq!(
            d.pending(&1, &log).map(|r| r.seq).collect::<Vec<_>>(),
            vec![s]
        );
        d.detach(&1);
        assert_eq!(d.pending(&1, &log).count(), 0);
    }

    proptest! {
        /// Whatever the interleaving of records and deliveries, every record
        /// for an attached nexus is delivered exactly once, in order.
        #[test]
        fn exactly_once_in_order(ops in proptest::collection::vec((0u8..3, any::<bool>()), 1..80)) {
            let mut log = UaLog::default();
            let mut d = Delivered::default();
            for n in 0..3u8 { d.attach(n, &log); }
            let mut got: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
            for (n, deliver) in ops {
                if deliver {
                    if let Some(r) = d.pending(&n, &log).next().cloned() {
                        got.entry(n).or_default().push(r.seq);
                        d.delivered(&n, r.seq);
                    }
                } else {
                    log.record(n, 0x2a, 3);
                }
            }
            for n in 0..3u8 {
                let rest: Vec<u64> = d.pending(&n, &log).map(|r| r.seq).collect();
                let mut all = got.remove(&n).unwrap_or_default();
                all.extend(rest);
                let want: Vec<u64> = log.records.iter().filter(|r| r.nexus == n).map(|r| r.seq).collect();
                prop_assert_eq!(all, want);
            }
        }
    }
}
