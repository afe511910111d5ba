//! The D-Bus service targetcli looks for: `org.kernel.TCMUService1` on the
//! system bus, laid out like tcmu-runner's so rtslib/targetcli need nothing
//! new:
//!
//! - `/org/kernel/TCMUService1`: `org.freedesktop.DBus.ObjectManager`;
//!   `GetManagedObjects` lists the handler object with its properties
//!   (targetcli makes one `/backstores/user:<last path element>` per entry).
//! - `/org/kernel/TCMUService1/dlmfile`: interface `org.kernel.TCMUService1`
//!   with property `ConfigDesc` (s) and method `CheckConfig(s) -> (b, s)`,
//!   called with `dlmfile/<cfgstring>` before targetcli writes configfs
//!   ([`handler`]).
//!
//! Owning the name doubles as the "one TCMU daemon per kernel" check: the
//! kernel sends every TCMU netlink event to all listeners and tcmu-runner
//! answers for devices it has no handler for, so tcmu-runner and tcmu-prd
//! would fight. The name is requested with DO_NOT_QUEUE; if it is taken the
//! daemon refuses to start before it touches netlink.
//!
//! Why zbus (blocking API): it is pure Rust (no libdbus to link or package)
//! and needs no async runtime of ours. Its connection runs its own small
//! executor on an internal thread ("zbus::Connection executor") that
//! dispatches method calls, so the mio event loop never waits on D-Bus;
//! only connecting and `RequestName` happen on the caller's thread, once, at
//! start. The `dbus` crate would have needed libdbus-1 and a thread of ours
//! polling it.
//!
//! `CheckConfig` stats paths on that thread; an image on a hung network
//! file system blocks D-Bus answers, never I/O.

pub mod handler;

use std::time::Duration;

use zbus::fdo::{RequestNameFlags, RequestNameReply};

use crate::config::cfgstring::SUBTYPE;

/// The well-known bus name targetcli asks for.
pub const BUS_NAME: &str = "org.kernel.TCMUService1";
/// Where the ObjectManager lives.
pub const ROOT_PATH: &str = "/org/kernel/TCMUService1";
/// How long a bus call at start may take before we give up.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The handler object's path, `/org/kernel/TCMUService1/dlmfile`.
#[must_use]
pub fn handler_path() -> String {
    format!("{ROOT_PATH}/{SUBTYPE}")
}

/// What `[daemon] dbus` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Absent: serve when a system bus is reachable and lets us own the
    /// name; otherwise warn and run without targetcli support.
    Auto,
    /// `true`: the daemon does not start without the service.
    Required,
    /// `false`: never connect.
    Off,
}

impl Mode {
    /// From the `[daemon] dbus` value.
    #[must_use]
    pub fn from_config(dbus: Option<bool>) -> Self {
        match dbus {
            None => Mode::Auto,
            Some(true) => Mode::Required,
            Some(false) => Mode::Off,
        }
    }
}

/// Why the service could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DbusError {
    /// No system bus to connect to (no dbus-daemon, or its socket is gone).
    #[error("cannot connect to the system bus: {0}")]
    NoBus(#[source] zbus::Error),
    /// The name is owned by another process: tcmu-runner or a second
    /// tcmu-prd. Always fatal: both would answer the kernel's netlink events.
    #[error(
        "tcmu-runner (or another tcmu-prd) owns {BUS_NAME}: they cannot run together \
         (both would answer the kernel's TCMU netlink events); stop it first{owner}"
    )]
    NameTaken {
        /// `"; owner: pid N (comm)"` when the bus tells, else empty.
        owner: String,
    },
    /// The bus policy does not let us own the name.
    #[error(
        "the system bus does not let us own {BUS_NAME}: {0} (install \
         dist/dbus/{BUS_NAME}.conf into /etc/dbus-1/system.d, then reload dbus)"
    )]
    NotAllowed(#[source] zbus::Error),
    /// Another bus error while registering.
    #[error("D-Bus: {0}")]
    Other(#[source] zbus::Error),
}

impl DbusError {
    /// Whether the daemon must not start, in `mode`. A taken name always
    /// stops it; the rest only when the service is required.
    #[must_use]
    pub fn is_fatal(&self, mode: Mode) -> bool {
        matches!(self, DbusError::NameTaken { .. }) || mode == Mode::Required
    }
}

/// The running service; dropping it closes the connection, which releases
/// the name.
#[derive(Debug)]
pub struct Service {
    conn: zbus::blocking::Connection,
}

impl Service {
    /// Connects to the system bus, exports the objects and owns [`BUS_NAME`].
    pub fn start() -> Result<Self, DbusError> {
        let conn = zbus::blocking::connection::Builder::system()
            .map_err(DbusError::NoBus)?
            .method_timeout(CALL_TIMEOUT)
            // Objects first, name last: a caller that sees the name finds them.
            .serve_at(ROOT_PATH, zbus::fdo::ObjectManager)
            .map_err(DbusError::Other)?
            .serve_at(handler_path(), handler::Handler)
            .map_err(DbusError::Other)?
            .build()
            .map_err(DbusError::NoBus)?;
        match conn.request_name_with_flags(BUS_NAME, RequestNameFlags::DoNotQueue.into()) {
            Ok(RequestNameReply::PrimaryOwner | RequestNameReply::AlreadyOwner) => {
                Ok(Service { conn })
            }
            Ok(RequestNameReply::Exists | RequestNameReply::InQueue)
            | Err(zbus::Error::NameTaken) => Err(DbusError::NameTaken {
                owner: owner_of(&conn),
            }),
            Err(e) if is_access_denied(&e) => Err(DbusError::NotAllowed(e)),
            Err(e) => Err(DbusError::Other(e)),
        }
    }

    /// Our unique name on the bus (for the log).
    #[must_use]
    pub fn unique_name(&self) -> String {
        self.conn
            .unique_name()
            .map_or_else(|| "?".into(), ToString::to_string)
    }
}

/// Starts the service as `mode` asks: `Ok(None)` when it is off or not
/// required and unavailable (already logged), `Err` when the daemon must
/// not start.
pub fn start(mode: Mode) -> Result<Option<Service>, DbusError> {
    if mode == Mode::Off {
        tracing::info!(
            "D-Bus service off ([daemon] dbus = false): targetcli will not list user:{SUBTYPE}"
        );
        return Ok(None);
    }
    match Service::start() {
        Ok(s) => {
            tracing::info!(
                name = %BUS_NAME,
                object = %handler_path(),
                unique = %s.unique_name(),
                "D-Bus service up"
            );
            Ok(Some(s))
        }
        Err(e) if e.is_fatal(mode) => Err(e),
        Err(e) => {
            tracing::warn!(
                "running without the D-Bus service (targetcli will not list user:{SUBTYPE}): {e}"
            );
            Ok(None)
        }
    }
}

/// `"; owner: pid N (comm)"` for the name's current owner, or empty.
fn owner_of(conn: &zbus::blocking::Connection) -> String {
    let Ok(proxy) = zbus::blocking::fdo::DBusProxy::new(conn) else {
        return String::new();
    };
    let Ok(name) = zbus::names::BusName::try_from(BUS_NAME) else {
        return String::new();
    };
    match proxy.get_connection_unix_process_id(name) {
        Ok(pid) => {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("; owner: pid {pid} ({})", comm.trim())
        }
        Err(_) => String::new(),
    }
}

fn is_access_denied(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::MethodError(name, _, _) => {
            name.as_str() == "org.freedesktop.DBus.Error.AccessDenied"
        }
        zbus::Error::FDO(f) => matches!(**f, zbus::fdo::Error::AccessDenied(_)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_what_targetcli_asks_for() {
        assert_eq!(handler_path(), "/org/kernel/TCMUService1/dlmfile");
        // targetcli names the backstore after the last path element.
        let p = handler_path();
        assert_eq!(&p[p.rfind('/').unwrap() + 1..], SUBTYPE);
    }

    #[test]
    fn mode_and_fatality() {
        assert_eq!(Mode::from_config(None), Mode::Auto);
        assert_eq!(Mode::from_config(Some(true)), Mode::Required);
        assert_eq!(Mode::from_config(Some(false)), Mode::Off);
        let taken = DbusError::NameTaken {
            owner: String::new(),
        };
        assert!(taken.is_fatal(Mode::Auto) && taken.is_fatal(Mode::Required));
        let nobus = DbusError::NoBus(zbus::Error::Unsupported);
        assert!(!nobus.is_fatal(Mode::Auto) && nobus.is_fatal(Mode::Required));
        assert!(taken.to_string().starts_with(
            "tcmu-runner (or another tcmu-prd) owns org.kernel.TCMUService1: they cannot run together"
        ));
    }
}
