//! Cluster synchronization of PR state (DESIGN.md §4).
//!
//! - `lockmgr`: the lock-manager interface (asynchronous, event-driven, as the DLM).
//! - `dlm`: the Linux DLM behind it, and the cluster thread that owns it.
//! - `local`: one process, no cluster (the default without a cluster).
//! - `fake`: a deterministic DLM test double with several simulated nodes.
//! - `cache`: the per-LU state cache and its protocol over any lock manager.
//! - `ua`: unit-attention bookkeeping across nodes.
//! - `store`: the durable, two-slot, checksummed state store on shared storage.
//! - `lvb`: the 32-byte lock value block that names the newest stored state.
//! - `selftest`: `tcmu-prd check-dlm`, proof that this node's DLM works for us.

pub mod cache;
pub mod dlm;
#[cfg(any(test, feature = "sim"))]
pub mod fake;
pub mod health;
pub mod local;
pub mod lockmgr;
pub mod lvb;
pub mod selftest;
pub mod store;
#[cfg(test)]
mod tests;
pub mod ua;
