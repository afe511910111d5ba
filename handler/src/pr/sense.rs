//! SAM status and sense values the engine returns. The SCSI layer turns a
//! [`SenseInfo`] into fixed or descriptor sense bytes; the engine never
//! formats sense itself.

/// SAM status of a completed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// GOOD (00h).
    Good,
    /// CHECK CONDITION (02h) with this sense.
    CheckCondition(SenseInfo),
    /// RESERVATION CONFLICT (18h); carries no sense data.
    ReservationConflict,
}

impl Status {
    /// The SAM status byte.
    pub fn code(self) -> u8 {
        match self {
            Status::Good => 0x00,
            Status::CheckCondition(_) => 0x02,
            Status::ReservationConflict => 0x18,
        }
    }
}

/// Sense key, ASC and ASCQ, plus the SENSE KEY SPECIFIC field pointer for
/// ILLEGAL REQUEST errors that SPC asks to point at a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseInfo {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub field: Option<FieldPointer>,
}

/// SPC-4 4.5.2.4.2 field pointer: which byte (and bit) of the CDB or of the
/// parameter list is in error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D bit: true when the error is in the CDB, false for parameter data.
    pub in_cdb: bool,
    pub byte: u16,
    /// BPV + BIT POINTER: the most significant bit of the field in error.
    pub bit: Option<u8>,
}

/// ILLEGAL REQUEST sense key.
pub const ILLEGAL_REQUEST: u8 = 0x05;
/// UNIT ATTENTION sense key.
pub const UNIT_ATTENTION: u8 = 0x06;

impl SenseInfo {
    /// Sense without a field pointer.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        SenseInfo {
            key,
            asc,
            ascq,
            field: None,
        }
    }

    /// INVALID FIELD IN CDB (24/00) pointing at `byte`/`bit` of the CDB.
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        SenseInfo {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..INVALID_FIELD_IN_CDB
        }
    }

    /// INVALID FIELD IN PARAMETER LIST (26/00) pointing at `byte`/`bit` of
    /// the parameter data.
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Self {
        SenseInfo {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..INVALID_FIELD_IN_PARAMETER_LIST
        }
    }
}

/// 24/00: ILLEGAL REQUEST, INVALID FIELD IN CDB.
pub const INVALID_FIELD_IN_CDB: SenseInfo = SenseInfo::new(ILLEGAL_REQUEST, 0x24, 0x00);
/// 26/00: ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
pub const INVALID_FIELD_IN_PARAMETER_LIST: SenseInfo = SenseInfo::new(ILLEGAL_REQUEST, 0x26, 0x00);
/// 1A/00: ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR.
pub const PARAMETER_LIST_LENGTH_ERROR: SenseInfo = SenseInfo::new(ILLEGAL_REQUEST, 0x1a, 0x00);
/// 26/04: ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION.
pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: SenseInfo =
    SenseInfo::new(ILLEGAL_REQUEST, 0x26, 0x04);
/// 20/00: ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
pub const INVALID_COMMAND_OPERATION_CODE: SenseInfo = SenseInfo::new(ILLEGAL_REQUEST, 0x20, 0x00);
/// 2A/03: UNIT ATTENTION, RESERVATIONS PREEMPTED.
pub const RESERVATIONS_PREEMPTED: SenseInfo = SenseInfo::new(UNIT_ATTENTION, 0x2a, 0x03);
/// 2A/04: UNIT ATTENTION, RESERVATIONS RELEASED.
pub const RESERVATIONS_RELEASED: SenseInfo = SenseInfo::new(UNIT_ATTENTION, 0x2a, 0x04);
/// 2A/05: UNIT ATTENTION, REGISTRATIONS PREEMPTED.
pub const REGISTRATIONS_PREEMPTED: SenseInfo = SenseInfo::new(UNIT_ATTENTION, 0x2a, 0x05);
/// 29/03: UNIT ATTENTION, BUS DEVICE RESET FUNCTION OCCURRED (a LOGICAL
/// UNIT RESET, reported to the other I_T nexuses of the LU).
pub const BUS_DEVICE_RESET_OCCURRED: SenseInfo = SenseInfo::new(UNIT_ATTENTION, 0x29, 0x03);
/// 2F/00: UNIT ATTENTION, COMMANDS CLEARED BY ANOTHER INITIATOR.
pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: SenseInfo =
    SenseInfo::new(UNIT_ATTENTION, 0x2f, 0x00);
