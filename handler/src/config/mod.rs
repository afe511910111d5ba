//! Configuration: the per-device cfgstring of the `dlmfile` subtype
//! ([`cfgstring`]) and the daemon-wide TOML file ([`file`]).

pub mod cfgstring;
pub mod file;

pub use cfgstring::{CfgError, DeviceConfig, check};
pub use file::{ClusterMode, Config, ConfigError, DEFAULT_CONFIG, DeviceFilter, Glob, config_path};
