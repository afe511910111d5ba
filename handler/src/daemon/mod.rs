//! The daemon: one event loop for uio fds, netlink and signals; command
//! execution on worker threads; systemd notification.

mod control;
mod device;
pub mod notify;
pub mod pool;
pub mod serve;

pub use serve::{DaemonError, RunOptions, run};
