//! Reservation states shared by the PR and per-command path benchmarks.

use tcmu_prd::pr::{Holder, Nexus, PrState, PrType, Registration, Reservation, TransportId};

/// The RTPI every benchmark nexus comes through.
pub const RTPI: u16 = 1;

/// Initiator `i` as LIO names it for iSCSI (no ISID): equal-length names
/// with a long common prefix, so no comparison stops at the length check.
pub fn initiator(i: usize) -> Nexus {
    Nexus {
        initiator: TransportId::Iscsi {
            name: format!("iqn.2024-01.com.example:host-{i:04}"),
            isid: None,
        },
        rtpi: RTPI,
    }
}

/// `n` registrants (initiators 0..n) and, if `n > 0`, a Write Exclusive -
/// Registrants Only reservation held by the LAST of them (the longest scan).
pub fn wero(n: usize) -> PrState {
    let registrations: Vec<Registration> = (0..n)
        .map(|i| Registration {
            nexus: initiator(i),
            key: 0x1000 + i as u64,
            all_tg_pt: false,
        })
        .collect();
    let reservation = registrations.last().map(|r| Reservation {
        holder: Holder::Nexus(r.nexus.clone()),
        kind: PrType::WriteExclusiveRegistrantsOnly,
    });
    PrState {
        generation: u32::try_from(n).unwrap_or(u32::MAX),
        registrations,
        reservation,
        ..PrState::default()
    }
}

/// An initiator no state registers.
pub fn stranger() -> Nexus {
    initiator(9999)
}
