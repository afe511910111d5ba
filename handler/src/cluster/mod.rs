//! Cluster synchronization of PR state (DESIGN.md §4).
//!
//! - `store`: the durable, two-slot, checksummed state store on shared storage.
//! - `lvb`: the 32-byte lock value block that names the newest stored state.
//! - `selftest`: `tcmu-prd check-dlm`, proof that this node's DLM works for us.
//!
//! The lock-manager trait (local and DLM) and the state cache come with the
//! cluster issue.

pub mod cache;
#[cfg(any(test, feature = "sim"))]
pub mod fake;
pub mod lockmgr;
pub mod lvb;
pub mod selftest;
pub mod store;
#[cfg(test)]
mod tests;
