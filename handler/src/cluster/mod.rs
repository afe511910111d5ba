//! Cluster synchronization of PR state (DESIGN.md §4).
//!
//! For now this holds the DLM self-check an admin runs to prove that this
//! node can create a user-space lockspace and pass a lock value block between
//! lock holders; the lock-manager trait and the state store come with the
//! cluster issue.

pub mod selftest;
