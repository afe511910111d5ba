//! Unit attentions the engine establishes for other I_T nexuses, and a
//! per-nexus queue that the SCSI layer drains on each nexus' next command.

use std::collections::{BTreeMap, VecDeque};

use super::sense::{
    BUS_DEVICE_RESET_OCCURRED, COMMANDS_CLEARED_BY_ANOTHER_INITIATOR, REGISTRATIONS_PREEMPTED,
    RESERVATIONS_PREEMPTED, RESERVATIONS_RELEASED, SenseInfo,
};
use super::state::Nexus;

/// A unit attention condition a PR command causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ua {
    /// 2A/03: CLEAR, or a PREEMPT that took the reservation.
    ReservationsPreempted,
    /// 2A/04: RELEASE of a registrants-only / all-registrants reservation,
    /// or a PREEMPT that changed the type.
    ReservationsReleased,
    /// 2A/05: the nexus' registration was removed by PREEMPT.
    RegistrationsPreempted,
    /// 2F/00: tasks of the nexus were aborted by PREEMPT AND ABORT (TAS=0).
    CommandsCleared,
    /// 29/03: another I_T nexus reset the logical unit (SAM-5: a LOGICAL
    /// UNIT RESET establishes a unit attention for every I_T nexus; LIO
    /// reports it to the issuing one, we to all the others).
    ResetOccurred,
}

impl Ua {
    /// The sense the UA is reported with.
    pub fn sense(self) -> SenseInfo {
        match self {
            Ua::ReservationsPreempted => RESERVATIONS_PREEMPTED,
            Ua::ReservationsReleased => RESERVATIONS_RELEASED,
            Ua::RegistrationsPreempted => REGISTRATIONS_PREEMPTED,
            Ua::CommandsCleared => COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
            Ua::ResetOccurred => BUS_DEVICE_RESET_OCCURRED,
        }
    }
}

/// A unit attention for one I_T nexus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitAttention {
    pub nexus: Nexus,
    pub ua: Ua,
}

/// Pending unit attentions per I_T nexus, reported oldest first (SAM-5
/// 5.14: one per command, the condition cleared when reported).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UaQueues {
    pending: BTreeMap<Nexus, VecDeque<Ua>>,
}

impl UaQueues {
    /// Queues `uas`; a condition already pending for a nexus is not queued
    /// twice.
    pub fn establish(&mut self, uas: &[UnitAttention]) {
        for u in uas {
            let q = self.pending.entry(u.nexus.clone()).or_default();
            if !q.contains(&u.ua) {
                q.push_back(u.ua);
            }
        }
    }

    /// The next unit attention to report to `nexus`, removed from its queue.
    pub fn take(&mut self, nexus: &Nexus) -> Option<Ua> {
        let key = self.pending.keys().find(|k| k.matches(nexus))?.clone();
        let q = self.pending.get_mut(&key)?;
        let ua = q.pop_front();
        if q.is_empty() {
            self.pending.remove(&key);
        }
        ua
    }

    /// Whether anything is pending for `nexus`.
    pub fn has_pending(&self, nexus: &Nexus) -> bool {
        self.pending.keys().any(|k| k.matches(nexus))
    }
}
