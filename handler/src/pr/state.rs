//! The persistent reservation state of one logical unit, and the I_T nexus
//! that identifies who issued a command.

use serde::{Deserialize, Serialize};

use super::transport_id::TransportId;

/// One I_T nexus: an initiator port and the target port (by its
/// cluster-unique relative target port identifier, DESIGN.md §2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Nexus {
    pub initiator: TransportId,
    pub rtpi: u16,
}

impl Nexus {
    /// Whether `self` and `other` are the same I_T nexus (see
    /// [`TransportId::matches`] for how initiator ports compare).
    pub fn matches(&self, other: &Nexus) -> bool {
        self.rtpi == other.rtpi && self.initiator.matches(&other.initiator)
    }
}

/// A target port of the LU, as the caller knows it (ALL_TG_PT and REGISTER
/// AND MOVE need the list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPort {
    pub rtpi: u16,
    /// Fabric WWN + TPG, for logs; the engine only compares `rtpi`.
    pub name: String,
}

/// Persistent reservation TYPE (SPC-4 table 170).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// All six types, in TYPE code order.
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// Decodes the TYPE field; `None` for reserved / obsolete codes.
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// The TYPE code.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// Write Exclusive family: reads stay open to everyone.
    pub fn write_exclusive(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }

    /// *-All Registrants: every registered I_T nexus is a holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants Only or All Registrants: registered nexuses get access.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }
}

/// One registered I_T nexus (SPC-4 5.13.7). An ALL_TG_PT registration is
/// one entry per target port, each with `all_tg_pt` set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub nexus: Nexus,
    pub key: u64,
    pub all_tg_pt: bool,
}

/// Who holds the persistent reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Holder {
    /// One registered I_T nexus.
    Nexus(Nexus),
    /// Every registered I_T nexus (types 7 and 8).
    AllRegistrants,
}

/// The persistent reservation; its scope is always LU_SCOPE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub holder: Holder,
    pub kind: PrType,
}

/// Everything the engine knows about one LU's reservations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    /// PRgeneration, a wrapping 32-bit counter (SPC-4 6.16.2).
    pub generation: u32,
    /// The last valid APTPL bit received.
    pub aptpl: bool,
    /// Registrations in the order they were made (READ KEYS order).
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// The I_T nexus holding an SPC-2 RESERVE(6)/(10) reservation.
    pub spc2_holder: Option<Nexus>,
}

impl PrState {
    /// Index of the registration of `nexus`, if registered.
    pub fn registration_index(&self, nexus: &Nexus) -> Option<usize> {
        self.registrations
            .iter()
            .position(|r| r.nexus.matches(nexus))
    }

    /// The registration of `nexus`, if registered.
    pub fn registration(&self, nexus: &Nexus) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.nexus.matches(nexus))
    }

    /// Whether `nexus` holds the persistent reservation (for all-registrants
    /// types: whether it is registered).
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(Reservation {
                holder: Holder::AllRegistrants,
                ..
            }) => self.registration(nexus).is_some(),
            Some(Reservation {
                holder: Holder::Nexus(h),
                ..
            }) => h.matches(nexus),
        }
    }

    /// Whether the registration at `i` makes its nexus a holder.
    pub(crate) fn registration_holds(&self, i: usize) -> bool {
        match &self.reservation {
            None => false,
            Some(Reservation {
                holder: Holder::AllRegistrants,
                ..
            }) => true,
            Some(Reservation {
                holder: Holder::Nexus(h),
                ..
            }) => self
                .registrations
                .get(i)
                .is_some_and(|r| r.nexus.matches(h)),
        }
    }

    /// The key READ RESERVATION reports: zero for all-registrants types
    /// (SPC-4 5.13.10), else the holder's key.
    pub fn reservation_key(&self) -> Option<u64> {
        let res = self.reservation.as_ref()?;
        Some(match &res.holder {
            Holder::AllRegistrants => 0,
            Holder::Nexus(h) => self.registration(h).map_or(0, |r| r.key),
        })
    }

    /// Removes the registration at `i`, and with it the reservation when the
    /// removed nexus was the only holder (SPC-4 5.13.11.3; for
    /// all-registrants types when no registrant is left).
    pub(crate) fn remove_registration(&mut self, i: usize) -> Registration {
        let was_holder = matches!(
            &self.reservation,
            Some(Reservation { holder: Holder::Nexus(h), .. }) if h.matches(&self.registrations[i].nexus)
        );
        let reg = self.registrations.remove(i);
        if was_holder || self.registrations.is_empty() {
            self.reservation = None;
        }
        reg
    }

    /// A power on / restart of the whole LU (SPC-4 5.13.5): without APTPL all
    /// registrations and the reservation are gone; SPC-2 reservations never
    /// survive.
    pub fn power_on(&self) -> PrState {
        let mut s = self.clone();
        s.spc2_holder = None;
        if !s.aptpl {
            s.registrations.clear();
            s.reservation = None;
        }
        s
    }
}
