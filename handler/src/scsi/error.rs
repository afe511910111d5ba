//! Every way a command can fail, and the ONE place that maps a failure to
//! SAM status and sense data.

use std::io;

use rustix::io::Errno;

use super::Response;
use super::sense::{self, FieldPointer, Sense, SenseCode, SenseInfo, status};

/// Why a command did not complete with GOOD status.
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    /// Unknown or unsupported operation code (also: empty CDB).
    #[error("invalid command operation code")]
    InvalidOpcode,
    /// A CDB field holds an unsupported or reserved value.
    #[error("invalid field in CDB at {0:?}")]
    InvalidFieldInCdb(FieldPointer),
    /// The CDB is shorter than its operation code requires.
    #[error("CDB too short: {have} bytes, {need} needed")]
    CdbTooShort {
        /// Bytes given.
        have: usize,
        /// Bytes required.
        need: usize,
    },
    /// A parameter list field holds an invalid value.
    #[error("invalid field in parameter list at {0:?}")]
    InvalidFieldInParam(FieldPointer),
    /// The parameter list length is invalid or the data-out is too short.
    #[error("parameter list length error")]
    ParameterListLength,
    /// The data-out or data-in buffer is shorter than the CDB implies.
    #[error("data buffer holds {have} bytes, the CDB implies {need}")]
    BufferLength {
        /// Bytes available.
        have: usize,
        /// Bytes the CDB implies.
        need: usize,
    },
    /// The LBA range exceeds the capacity.
    #[error("LBA out of range")]
    LbaOutOfRange,
    /// The medium is write protected (read-only image or SWP).
    #[error("write protected")]
    WriteProtected,
    /// Page control "saved values" asked for; we keep no saved pages.
    #[error("saving parameters not supported")]
    SavingNotSupported(FieldPointer),
    /// Data did not match during VERIFY / WRITE AND VERIFY / COMPARE AND
    /// WRITE; `offset` is the first differing byte of the data-out buffer.
    #[error("miscompare at byte {offset}")]
    Miscompare {
        /// Offset of the first differing byte.
        offset: u64,
    },
    /// The backing failed a read.
    #[error("read failed: {0}")]
    Read(#[source] io::Error),
    /// The backing failed a write, zeroing or discard.
    #[error("write failed: {0}")]
    Write(#[source] io::Error),
    /// The backing failed a cache flush.
    #[error("sync failed: {0}")]
    Sync(#[source] io::Error),
    /// A hook (e.g. the cluster lock) refused for now; retry.
    #[error("busy")]
    Busy,
    /// EXTENDED COPY refused or aborted: which check, and the parameter list
    /// field that failed it.
    #[error("extended copy: {0:?} at {1:?}")]
    Copy(CopyFault, FieldPointer),
}

/// Why an EXTENDED COPY parameter list cannot be carried out (beyond the
/// generic parameter list errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFault {
    /// More CSCD descriptors than OPERATING PARAMETERS allows.
    TooManyCscds,
    /// A CSCD descriptor type other than identification (E4h).
    UnsupportedCscdType,
    /// More segment descriptors than OPERATING PARAMETERS allows.
    TooManySegments,
    /// A segment descriptor type other than block to block (02h).
    UnsupportedSegmentType,
    /// A segment names a CSCD that is missing, not this logical unit, or a
    /// block range outside it.
    TargetNotReachable,
    /// A CSCD naming this logical unit gives another peripheral device type.
    IncorrectTargetType,
}

fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw_os_error)
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(errno(e), Some(Errno::NOSPC | Errno::DQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

fn is_read_only(e: &io::Error) -> bool {
    errno(e) == Some(Errno::ROFS) || e.kind() == io::ErrorKind::ReadOnlyFilesystem
}

fn is_medium(e: &io::Error) -> bool {
    matches!(errno(e), Some(Errno::IO | Errno::NODATA | Errno::BADMSG))
}

impl ScsiError {
    /// Sense data describing this error (`None` for statuses without it).
    pub fn sense_info(&self) -> Option<SenseInfo> {
        let plain = |code: SenseCode| Some(SenseInfo::new(code));
        let pointed = |code: SenseCode, fp: FieldPointer| {
            Some(SenseInfo {
                code,
                information: None,
                field: Some(fp),
            })
        };
        match self {
            Self::InvalidOpcode => plain(sense::INVALID_COMMAND_OPERATION_CODE),
            Self::InvalidFieldInCdb(fp) => pointed(sense::INVALID_FIELD_IN_CDB, *fp),
            Self::CdbTooShort { .. } => plain(sense::INVALID_FIELD_IN_CDB),
            Self::InvalidFieldInParam(fp) => pointed(sense::INVALID_FIELD_IN_PARAMETER_LIST, *fp),
            Self::ParameterListLength => plain(sense::PARAMETER_LIST_LENGTH_ERROR),
            Self::BufferLength { .. } => plain(sense::INVALID_FIELD_IN_COMMAND_IU),
            Self::LbaOutOfRange => plain(sense::LBA_OUT_OF_RANGE),
            Self::WriteProtected => plain(sense::WRITE_PROTECTED),
            Self::SavingNotSupported(fp) => pointed(sense::SAVING_PARAMETERS_NOT_SUPPORTED, *fp),
            Self::Miscompare { offset } => Some(SenseInfo {
                code: sense::MISCOMPARE_DURING_VERIFY,
                information: Some(*offset),
                field: None,
            }),
            Self::Read(e) if is_medium(e) => plain(sense::UNRECOVERED_READ_ERROR),
            Self::Write(e) | Self::Sync(e) if is_no_space(e) => {
                plain(sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT)
            }
            Self::Write(e) if is_read_only(e) => plain(sense::WRITE_PROTECTED),
            Self::Write(e) | Self::Sync(e) if is_medium(e) => plain(sense::WRITE_ERROR),
            Self::Read(_) | Self::Write(_) | Self::Sync(_) => plain(sense::INTERNAL_TARGET_FAILURE),
            Self::Busy => None,
            Self::Copy(fault, fp) => pointed(
                match fault {
                    CopyFault::TooManyCscds => sense::TOO_MANY_TARGET_DESCRIPTORS,
                    CopyFault::UnsupportedCscdType => {
                        sense::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE
                    }
                    CopyFault::TooManySegments => sense::TOO_MANY_SEGMENT_DESCRIPTORS,
                    CopyFault::UnsupportedSegmentType => {
                        sense::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE
                    }
                    CopyFault::TargetNotReachable => sense::COPY_TARGET_DEVICE_NOT_REACHABLE,
                    CopyFault::IncorrectTargetType => sense::INCORRECT_COPY_TARGET_DEVICE_TYPE,
                },
                *fp,
            ),
        }
    }

    /// The response for this error, with sense in descriptor format if
    /// `descriptor` (the control page's D_SENSE).
    pub fn to_response(&self, descriptor: bool) -> Response {
        match self.sense_info() {
            Some(info) => Response {
                status: status::CHECK_CONDITION,
                sense: Some(Sense::encode(&info, descriptor)),
                data_in_len: 0,
            },
            None => Response {
                status: status::BUSY,
                sense: None,
                data_in_len: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_sbc_sense() {
        let cases: &[(ScsiError, SenseCode)] = &[
            (
                ScsiError::Read(Errno::IO.into()),
                sense::UNRECOVERED_READ_ERROR,
            ),
            (ScsiError::Write(Errno::IO.into()), sense::WRITE_ERROR),
            (
                ScsiError::Write(Errno::NOSPC.into()),
                sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
            ),
            (
                ScsiError::Write(Errno::DQUOT.into()),
                sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
            ),
            (ScsiError::Write(Errno::ROFS.into()), sense::WRITE_PROTECTED),
            (
                ScsiError::Read(Errno::INVAL.into()),
                sense::INTERNAL_TARGET_FAILURE,
            ),
            (ScsiError::Sync(Errno::IO.into()), sense::WRITE_ERROR),
        ];
        for (e, code) in cases {
            let r = e.to_response(false);
            assert_eq!(r.status, status::CHECK_CONDITION);
            assert_eq!(r.sense.unwrap().code(), *code, "{e:?}");
        }
        assert_eq!(
            sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT.key,
            sense::key::DATA_PROTECT
        );
        let r = ScsiError::Busy.to_response(true);
        assert_eq!((r.status, r.sense), (status::BUSY, None));
    }
}
