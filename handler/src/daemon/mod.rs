//! The daemon: one event loop for netlink, signals and control queries; a
//! ring thread per logical unit for its views' uio fds; command execution
//! on worker threads; systemd notification.

mod control;
mod device;
mod lu_thread;
pub mod notify;
pub mod pool;
pub mod serve;

pub use serve::{DaemonError, RunOptions, run};
