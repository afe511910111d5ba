//! The daemon: one event loop for uio fds, netlink and signals; command
//! execution on worker threads; systemd notification.

pub mod notify;
pub mod pool;
