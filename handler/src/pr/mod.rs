//! The pure SPC-4 persistent reservation and SPC-2 reservation engine.
//!
//! Input: a CDB, its data-out bytes, the issuing I_T nexus, the LU's target
//! ports and the current [`PrState`]. Output: an [`Outcome`] with status,
//! sense, data-in, the new state (when it changed), unit attentions for
//! other nexuses and the nexuses whose tasks PREEMPT AND ABORT aborts. No
//! I/O, no clocks, no locks: the cluster code applies the outcome.

pub mod conflict;
pub mod prin;
pub mod prout;
pub mod sense;
pub mod spc2;
pub mod state;
pub mod transport_id;
pub mod ua;

#[cfg(test)]
mod tests;

pub use conflict::{Access, AccessClass, check_access, check_access_with, classify};
pub use sense::{FieldPointer, SenseInfo, Status};
pub use spc2::{lu_reset, nexus_lost};
pub use state::{Holder, Nexus, PrState, PrType, Registration, Reservation, TargetPort};
pub use transport_id::{TransportId, TransportIdError};
pub use ua::{Ua, UaQueues, UnitAttention};

/// PERSISTENT RESERVE IN operation code.
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// PERSISTENT RESERVE OUT operation code.
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// Data-in (PR IN), already cut to the allocation length.
    pub data_in: Vec<u8>,
    /// The new state, present only when it differs from the old one. The
    /// caller must make it durable before completing the command.
    pub new_state: Option<PrState>,
    /// Unit attentions to establish for other I_T nexuses.
    pub unit_attentions: Vec<UnitAttention>,
    /// PREEMPT AND ABORT: abort every task of these nexuses (as by CLEAR
    /// TASK SET) before completing, and with TAS=0 establish
    /// [`Ua::CommandsCleared`] (2F/00) for each of them that had a task
    /// aborted (SPC-4 5.13.11.5, SAM-5 7.3).
    pub abort: Vec<Nexus>,
    /// Whether the APTPL setting changed (the state store must then keep,
    /// or stop keeping, the state across power loss).
    pub aptpl_changed: bool,
}

impl Outcome {
    fn rejected(r: Reject) -> Outcome {
        let status = match r {
            Reject::Conflict => Status::ReservationConflict,
            Reject::Sense(s) => Status::CheckCondition(s),
        };
        Outcome {
            status,
            data_in: Vec::new(),
            new_state: None,
            unit_attentions: Vec::new(),
            abort: Vec::new(),
            aptpl_changed: false,
        }
    }

    fn done(old: &PrState, fx: Effect) -> Outcome {
        let new_state = fx.state.filter(|s| s != old);
        let aptpl_changed = new_state.as_ref().is_some_and(|s| s.aptpl != old.aptpl);
        Outcome {
            status: Status::Good,
            data_in: fx.data,
            new_state,
            unit_attentions: fx.uas,
            abort: fx.abort,
            aptpl_changed,
        }
    }
}

/// Why a command did not complete with GOOD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    Conflict,
    Sense(SenseInfo),
}

impl From<SenseInfo> for Reject {
    fn from(s: SenseInfo) -> Self {
        Reject::Sense(s)
    }
}

/// What a successful command changes, built by the service actions.
#[derive(Debug, Default)]
pub(crate) struct Effect {
    state: Option<PrState>,
    data: Vec<u8>,
    uas: Vec<UnitAttention>,
    abort: Vec<Nexus>,
}

impl Effect {
    fn with_state(s: PrState) -> Effect {
        Effect {
            state: Some(s),
            ..Effect::default()
        }
    }

    fn ua(&mut self, nexus: &Nexus, ua: Ua) {
        self.uas.push(UnitAttention {
            nexus: nexus.clone(),
            ua,
        });
    }
}

/// Whether the engine handles this operation code (PR IN/OUT, RESERVE and
/// RELEASE (6)/(10)).
pub fn is_pr_command(op: u8) -> bool {
    matches!(
        op,
        PERSISTENT_RESERVE_IN
            | PERSISTENT_RESERVE_OUT
            | spc2::RESERVE_6
            | spc2::RELEASE_6
            | spc2::RESERVE_10
            | spc2::RELEASE_10
    )
}

/// Runs one PR command from `nexus`. Applies [`check_access`] itself, so
/// the caller need not for these opcodes. Any other opcode gets INVALID
/// COMMAND OPERATION CODE.
pub fn execute(
    state: &PrState,
    ports: &[TargetPort],
    nexus: &Nexus,
    cdb: &[u8],
    data_out: &[u8],
) -> Outcome {
    let Some(&op) = cdb.first().filter(|op| is_pr_command(**op)) else {
        return Outcome::rejected(sense::INVALID_COMMAND_OPERATION_CODE.into());
    };
    let need = if op >= 0x20 { 10 } else { 6 };
    if cdb.len() < need {
        let byte = u16::try_from(cdb.len()).unwrap_or(u16::MAX);
        return Outcome::rejected(SenseInfo::invalid_cdb_field(byte, None).into());
    }
    if check_access(state, nexus, cdb) == Access::Conflict {
        return Outcome::rejected(Reject::Conflict);
    }
    let r = match op {
        PERSISTENT_RESERVE_IN => prin::pr_in(state, cdb)
            .map(|data| Effect {
                data,
                ..Effect::default()
            })
            .map_err(Reject::from),
        PERSISTENT_RESERVE_OUT => prout::pr_out(state, ports, nexus, cdb, data_out),
        spc2::RESERVE_6 | spc2::RESERVE_10 => spc2::reserve(state, nexus, cdb),
        _ => spc2::release(state, nexus, cdb),
    };
    match r {
        Ok(fx) => Outcome::done(state, fx),
        Err(rej) => Outcome::rejected(rej),
    }
}
