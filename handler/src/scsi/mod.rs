//! SCSI emulation (in progress).
