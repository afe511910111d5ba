//! Logging: tracing to stderr, filtered by `TCMU_PRD_LOG` (same syntax as
//! `RUST_LOG`), else by the configured level. The filter can be changed while
//! running: SIGHUP re-reads the config (`TCMU_PRD_LOG` still wins), `tcmu-prd
//! log-level FILTER` sets it outright over the control socket.
//!
//! Under systemd (stderr is the stream `$JOURNAL_STREAM` names) lines go to
//! stderr without timestamps (journald stamps them) and start with a
//! `<N>` syslog priority prefix, which journald turns into the entry's
//! PRIORITY (`journalctl -p warning` works). We do not use the
//! tracing-journald crate: it puts every field but the message into its own
//! journal field, so `journalctl -u tcmu-prd` would show "opened" without
//! the `device=user_1/lu1` that says which device; here the whole line,
//! fields included, is the MESSAGE.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn filter_for(level: &str) -> EnvFilter {
    EnvFilter::try_from_env("TCMU_PRD_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Whether stderr is journald's stream for this service: `$JOURNAL_STREAM`
/// is `<device>:<inode>` of it (systemd.exec(5)). Comparing the two keeps a
/// daemon started by hand from a service's shell (which inherits the
/// variable) writing priority prefixes into a file.
#[must_use]
pub fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    journal_stream_matches(&var.to_string_lossy(), st.st_dev, st.st_ino)
}

fn journal_stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The `<N>` prefix journald reads as the syslog priority.
fn priority(level: &Level) -> &'static [u8] {
    match *level {
        Level::ERROR => b"<3>",
        Level::WARN => b"<4>",
        Level::INFO => b"<6>",
        Level::DEBUG | Level::TRACE => b"<7>",
    }
}

/// stderr with a priority prefix per event (fmt writes one event with one
/// `write_all`, so the first write of a writer starts the line).
#[derive(Debug, Clone, Copy)]
struct JournalStderr;

#[derive(Debug)]
struct PrefixedLine {
    prefix: &'static [u8],
    started: bool,
}

impl Write for PrefixedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if !self.started {
            self.started = true;
            let mut line = Vec::with_capacity(self.prefix.len() + buf.len());
            line.extend_from_slice(self.prefix);
            line.extend_from_slice(buf);
            err.write_all(&line)?;
        } else {
            err.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for JournalStderr {
    type Writer = PrefixedLine;
    fn make_writer(&'a self) -> PrefixedLine {
        PrefixedLine {
            prefix: b"<6>",
            started: false,
        }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> PrefixedLine {
        PrefixedLine {
            prefix: priority(meta.level()),
            started: false,
        }
    }
}

/// Installs the global subscriber. Later calls do nothing.
pub fn init(default_level: &str) {
    let (filter, handle) = reload::Layer::new(filter_for(default_level));
    let journal = stderr_is_journal();
    let terminal = (!journal).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
    });
    let journald = journal.then(|| {
        fmt::layer()
            .with_writer(JournalStderr)
            .with_ansi(false)
            .without_time()
            .with_target(false)
    });
    if tracing_subscriber::registry()
        .with(filter)
        .with(terminal)
        .with(journald)
        .try_init()
        .is_ok()
    {
        let _ = RELOAD.set(handle);
    }
}

/// Changes the level (an `EnvFilter` directive such as `debug` or
/// `info,tcmu_prd::ring=trace`). `TCMU_PRD_LOG`, when set, still wins.
/// Returns false if the directive is invalid or logging is not initialised.
pub fn set_level(level: &str) -> bool {
    let Ok(filter) = EnvFilter::try_new(level) else {
        return false;
    };
    let filter = EnvFilter::try_from_env("TCMU_PRD_LOG").unwrap_or(filter);
    RELOAD.get().is_some_and(|h| h.reload(filter).is_ok())
}

/// Sets the filter to `directive` as given, over `TCMU_PRD_LOG` too: an
/// operator's explicit request (`tcmu-prd log-level`). The next SIGHUP
/// goes back to the config file's level (or `TCMU_PRD_LOG`). Returns the
/// filter now in force.
pub fn set_filter(directive: &str) -> Result<String, String> {
    let filter = EnvFilter::builder()
        .parse(directive)
        .map_err(|e| format!("invalid log filter {directive:?}: {e}"))?;
    let h = RELOAD
        .get()
        .ok_or_else(|| "logging is not initialised".to_owned())?;
    h.reload(filter).map_err(|e| e.to_string())?;
    current().ok_or_else(|| "logging is not initialised".to_owned())
}

/// The filter in force, as `EnvFilter` prints it.
#[must_use]
pub fn current() -> Option<String> {
    RELOAD
        .get()
        .and_then(|h| h.with_current(ToString::to_string).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        for bad in ["", ":", "8", "8:", ":1", "x:y", "8:1:2", "-1:5"] {
            assert!(!journal_stream_matches(bad, 8, 1), "{bad:?}");
        }
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR), b"<3>");
        assert_eq!(priority(&Level::WARN), b"<4>");
        assert_eq!(priority(&Level::INFO), b"<6>");
        assert_eq!(priority(&Level::DEBUG), b"<7>");
        assert_eq!(priority(&Level::TRACE), b"<7>");
    }

    #[test]
    fn set_filter_checks_the_directive() {
        // "off" at both ends: other tests of this binary log through it.
        init("off");
        assert!(
            set_filter("=bad==")
                .unwrap_err()
                .contains("invalid log filter")
        );
        assert_eq!(set_filter("debug").unwrap(), "debug");
        assert_eq!(current().as_deref(), Some("debug"));
        assert_eq!(
            set_filter("info,tcmu_prd::ring=trace").unwrap(),
            "tcmu_prd::ring=trace,info"
        );
        set_filter("off").unwrap();
    }
}
