//! Logging: tracing to stderr (journald captures it under systemd), filtered
//! by `TCMU_PRD_LOG` (same syntax as `RUST_LOG`), else by the configured
//! level; the level can be changed while running (SIGHUP reload).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn filter_for(level: &str) -> EnvFilter {
    EnvFilter::try_from_env("TCMU_PRD_LOG")
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber. Later calls do nothing.
pub fn init(default_level: &str) {
    let (filter, handle) = reload::Layer::new(filter_for(default_level));
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if tracing_subscriber::registry()
        .with(filter)
        .with(layer)
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
