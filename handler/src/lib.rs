//! tcmu-prd: a TCMU backstore handler for LIO that implements SCSI-3
//! persistent reservations itself and keeps them consistent across LIO nodes
//! through the Linux DLM. See ARCHITECTURE.md for the map of this crate.

pub mod backing;
pub mod cluster;
pub mod config;
pub mod configfs;
pub mod control;
pub mod daemon;
pub mod dbus;
pub mod export;
pub mod logging;
pub mod lu;
pub mod netlink;
pub mod nexus;
pub mod pr;
pub mod ring;
pub mod scsi;
pub mod uio;
