//! The daemon-wide configuration file (TOML), e.g.
//! `/etc/tcmu-prd/tcmu-prd.toml`:
//!
//! ```toml
//! [daemon]
//! worker_threads = 4
//! io_uring = true      # READ/WRITE at depth through io_uring (false: workers)
//! poll_us = 0           # watch the rings this long before sleeping (iodepth 1)
//! log_level = "info"
//! dbus = true           # absent: use the system bus if there is one
//!
//! [devices]             # which devices this process serves
//! hbas = [1, 2]         # user_1 and user_2 only; empty or absent: any
//! names = ["vol*"]      # backstore name globs; empty or absent: any
//!
//! [cluster]
//! mode = "dlm"          # or "local"
//! lockspace = "tcmu-prd"
//! update_timeout_ms = 10000
//!
//! [paths]
//! configfs = "/sys/kernel/config"
//! sysfs = "/sys"
//! control_socket = "/run/tcmu-prd/control.sock"   # `tcmu-prd status`
//! ```
//!
//! Every table and key is optional; unknown keys are errors.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::cfgstring::SUBTYPE;

/// The config file `tcmu-prd run` (and `status`, for the socket path) reads
/// when none is given and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/tcmu-prd/tcmu-prd.toml";

/// The config file to use: the one given, else [`DEFAULT_CONFIG`] if it
/// exists, else none (built-in defaults).
#[must_use]
pub fn config_path(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| {
        let d = PathBuf::from(DEFAULT_CONFIG);
        d.exists().then_some(d)
    })
}
use crate::configfs::Roots;
use crate::uio::TcmuName;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[daemon]`: process-wide settings.
    pub daemon: Daemon,
    /// `[devices]`: which devices this process serves.
    pub devices: DeviceFilter,
    /// `[cluster]`: how PR state is shared between nodes.
    pub cluster: Cluster,
    /// `[paths]`: where the kernel interfaces are mounted.
    pub paths: Paths,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// `worker_threads`: threads executing I/O (at least 1). Default: the
    /// number of CPUs.
    pub worker_threads: NonZeroUsize,
    /// `io_uring`: each LU's ring thread does READ/WRITE at depth through
    /// its own io_uring, many outstanding at once, instead of handing each
    /// to a worker that blocks on it (which bounds the I/O outstanding on
    /// the medium to `worker_threads`). Where the kernel refuses io_uring
    /// the workers do it, with a warning. A reload applies it to LUs started
    /// afterwards. Default `true`.
    pub io_uring: bool,
    /// `poll_us`: how long (microseconds, at most 10000) the ring thread of
    /// an LU, once nothing of that LU is outstanding, watches the rings of
    /// its views for the next command before it sleeps on their uio fds.
    /// It lowers the
    /// latency of an initiator at iodepth 1 (no uio wake-up and thread
    /// switch per command) at the price of a busy CPU for up to that long
    /// after each command. A watch that runs out stops the watching until
    /// a command comes within that long of the thread going idle. Default
    /// `0`: sleep at once.
    pub poll_us: PollUs,
    /// `log_level`: a `tracing` filter directive such as `"info"` or
    /// `"tcmu_prd::netlink=debug,info"`; `RUST_LOG` overrides it. Default
    /// `"info"`.
    pub log_level: LogLevel,
    /// `dbus`: own `org.kernel.TCMUService1` on the system bus so targetcli
    /// finds the `dlmfile` handler. Absent (the default): own it when a
    /// system bus is reachable and we may own the name, else warn and run
    /// without it. `true`: required, the daemon refuses to start without it.
    /// `false`: never connect. In the first two cases a name already owned
    /// (tcmu-runner) stops the start. See [`crate::dbus`].
    pub dbus: Option<bool>,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            worker_threads: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            io_uring: true,
            poll_us: PollUs(0),
            log_level: LogLevel("info".into()),
            dbus: None,
        }
    }
}

impl Daemon {
    /// `poll_us` as a duration.
    #[must_use]
    pub fn poll(&self) -> std::time::Duration {
        std::time::Duration::from_micros(u64::from(self.poll_us.0))
    }
}

/// `poll_us`: 0..=[`PollUs::MAX`] microseconds, checked when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "i64")]
pub struct PollUs(pub u32);

impl PollUs {
    /// 10 ms: longer than that, sleeping costs less than a busy CPU.
    pub const MAX: u32 = 10_000;
}

impl TryFrom<i64> for PollUs {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        match u32::try_from(v) {
            Ok(us) if us <= Self::MAX => Ok(PollUs(us)),
            _ => Err(format!(
                "poll_us must be 0..={} (microseconds), not {v}",
                Self::MAX
            )),
        }
    }
}

/// A `tracing` filter directive, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LogLevel(pub String);

impl TryFrom<String> for LogLevel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&s)
            .map_err(|e| format!("invalid log filter {s:?}: {e}"))?;
        Ok(LogLevel(s))
    }
}

/// `[devices]`: the devices this process serves. A device is served when
/// its subtype is `dlmfile`, its HBA is in `hbas` (or `hbas` is empty) and
/// its name matches one of `names` (or `names` is empty). Events for other
/// devices are never answered, so several daemons can share one kernel as
/// long as their filters do not overlap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceFilter {
    /// `hbas`: HBA indexes (`user_<N>`) served; empty = all.
    pub hbas: Vec<u32>,
    /// `names`: backstore-name globs (`*` any run, `?` one character,
    /// everything else literal); empty = all.
    pub names: Vec<Glob>,
}

impl DeviceFilter {
    /// Whether this process serves the device.
    #[must_use]
    pub fn matches(&self, id: &TcmuName) -> bool {
        id.subtype == SUBTYPE
            && (self.hbas.is_empty() || self.hbas.contains(&id.hba))
            && (self.names.is_empty() || self.names.iter().any(|g| g.matches(&id.name)))
    }
}

/// A name glob: `*` matches any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Glob(String);

impl TryFrom<String> for Glob {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty name glob".into());
        }
        if s.contains('/') {
            return Err(format!("name glob {s:?} contains '/'"));
        }
        Ok(Glob(s))
    }
}

impl Glob {
    /// Builds a glob (same checks as in the file).
    pub fn new(s: &str) -> Result<Self, String> {
        Glob::try_from(s.to_owned())
    }

    /// Whether `name` matches, in O(len(glob) · len(name)).
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        let p: Vec<char> = self.0.chars().collect();
        let n: Vec<char> = name.chars().collect();
        // Greedy star matching with backtracking to the last star.
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
                pi += 1;
                ni += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ni));
                pi += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// `mode`: `"local"` (one node, no DLM) or `"dlm"`. Default `"local"`.
    pub mode: ClusterMode,
    /// `lockspace`: DLM lockspace name (1–64 bytes of `[A-Za-z0-9_.-]`).
    /// Default `"tcmu-prd"`.
    pub lockspace: Lockspace,
    /// `update_timeout_ms`: how long a PR update may wait for the cluster
    /// lock and the state store before the command fails (≥ 1). Default 10000.
    pub update_timeout_ms: std::num::NonZeroU64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            mode: ClusterMode::Local,
            lockspace: Lockspace("tcmu-prd".into()),
            update_timeout_ms: std::num::NonZeroU64::new(10_000)
                .unwrap_or(std::num::NonZeroU64::MIN),
        }
    }
}

/// `cluster.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterMode {
    /// Single node: locks are process-local.
    Local,
    /// Linux DLM across the nodes exporting the same images.
    Dlm,
}

/// A DLM lockspace name, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Lockspace(pub String);

impl TryFrom<String> for Lockspace {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        // DLM_LOCKSPACE_LEN is 64.
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Lockspace(s))
        } else {
            Err(format!(
                "lockspace {s:?}: 1-64 characters of A-Z a-z 0-9 _ . -"
            ))
        }
    }
}

/// `[paths]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// `configfs`: configfs mount point. Default `/sys/kernel/config`.
    pub configfs: PathBuf,
    /// `sysfs`: sysfs mount point (uio devices, module parameters).
    /// Default `/sys`.
    pub sysfs: PathBuf,
    /// `control_socket`: the Unix socket `tcmu-prd status` and `tcmu-prd
    /// log-level` talk to. Default `/run/tcmu-prd/control.sock`; daemons
    /// sharing a machine need one each.
    pub control_socket: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        let r = Roots::default();
        Paths {
            configfs: r.configfs,
            sysfs: r.sysfs,
            control_socket: PathBuf::from(crate::control::DEFAULT_SOCKET),
        }
    }
}

impl Paths {
    /// As configfs/sysfs roots.
    #[must_use]
    pub fn roots(&self) -> Roots {
        Roots {
            configfs: self.configfs.clone(),
            sysfs: self.sysfs.clone(),
        }
    }
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema. `message` names the key.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending value or key (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
}

impl Config {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses file contents; `file` is used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            let mut message = e.message().trim_end().to_owned();
            // Name the key the span points at when the message does not.
            if let Some(key) = e.span().and_then(|s| key_at(text, s.start))
                && !message.contains(&key)
            {
                message = format!("key `{key}`: {message}");
            }
            ConfigError::Parse {
                file: file.to_owned(),
                line,
                column,
                message,
            }
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The `[table]` and key of the line containing `offset`, as `table.key`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() {
        return None;
    }
    let table = text[..line_start].lines().rev().find_map(|l| {
        l.trim()
            .strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .map(str::trim)
    });
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Config, String> {
        Config::parse(s, Path::new("/etc/t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.cluster.mode, ClusterMode::Local);
        assert_eq!(c.cluster.lockspace.0, "tcmu-prd");
        assert_eq!(c.daemon.dbus, None, "D-Bus: use it when there is a bus");
        assert!(c.daemon.poll().is_zero(), "no polling unless asked for");
        assert_eq!(c.paths.roots(), Roots::default());
        assert_eq!(
            c.paths.control_socket,
            PathBuf::from("/run/tcmu-prd/control.sock")
        );
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
[daemon]
worker_threads = 3
io_uring = false
poll_us = 250
log_level = "tcmu_prd::netlink=debug,info"
dbus = false
[devices]
hbas = [1, 2]
names = ["vol*", "db?"]
[cluster]
mode = "dlm"
lockspace = "prd-a"
update_timeout_ms = 2500
[paths]
configfs = "/tmp/cfg"
sysfs = "/tmp/sys"
control_socket = "/run/t/a.sock"
"#,
        )
        .unwrap();
        assert_eq!(c.daemon.worker_threads.get(), 3);
        assert!(!c.daemon.io_uring);
        assert_eq!(c.daemon.poll(), std::time::Duration::from_micros(250));
        assert_eq!(c.daemon.dbus, Some(false));
        assert_eq!(c.devices.hbas, vec![1, 2]);
        assert_eq!(c.cluster.mode, ClusterMode::Dlm);
        assert_eq!(c.cluster.update_timeout_ms.get(), 2500);
        assert_eq!(c.paths.configfs, PathBuf::from("/tmp/cfg"));
        assert_eq!(c.paths.control_socket, PathBuf::from("/run/t/a.sock"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("[daemon]\nworkers = 2\n", "/etc/t.toml:2:", "workers"),
            (
                "[daemon]\nworker_threads = 0\n",
                "/etc/t.toml:2:",
                "daemon.worker_threads",
            ),
            (
                "[daemon]\nlog_level = \"=bad==\"\n",
                "/etc/t.toml:2:",
                "daemon.log_level",
            ),
            (
                "[cluster]\nmode = \"raft\"\n",
                "/etc/t.toml:2:",
                "cluster.mode",
            ),
            (
                "[cluster]\n\nlockspace = \"a b\"\n",
                "/etc/t.toml:3:",
                "cluster.lockspace",
            ),
            (
                "[devices]\nnames = [\"\"]\n",
                "/etc/t.toml:2:",
                "devices.names",
            ),
            ("[devices]\nhbas = [-1]\n", "/etc/t.toml:2:", "devices.hbas"),
            (
                "[daemon]\npoll_us = 10001\n",
                "/etc/t.toml:2:",
                "poll_us must be 0..=10000",
            ),
            (
                "[daemon]\npoll_us = -1\n",
                "/etc/t.toml:2:",
                "poll_us must be 0..=10000",
            ),
            (
                "[daemon]\npoll_us = \"50\"\n",
                "/etc/t.toml:2:",
                "daemon.poll_us",
            ),
            ("[bogus]\n", "/etc/t.toml:1:", "bogus"),
            ("[daemon\n", "/etc/t.toml:1:", ""),
        ];
        for (text, loc, key) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(loc), "{text:?}: {e}");
            assert!(e.contains(key), "{text:?}: {e} lacks {key}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/tcmu-prd.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/tcmu-prd.toml: "));
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("c.toml");
        std::fs::write(&f, "[cluster]\nmode = \"dlm\"\n").unwrap();
        assert_eq!(Config::load(&f).unwrap().cluster.mode, ClusterMode::Dlm);
    }

    fn id(s: &str) -> TcmuName {
        TcmuName::parse(s).unwrap()
    }

    #[test]
    fn device_filter_table() {
        let f = |hbas: &[u32], names: &[&str]| DeviceFilter {
            hbas: hbas.to_vec(),
            names: names.iter().map(|n| Glob::new(n).unwrap()).collect(),
        };
        let cases: &[(DeviceFilter, &str, bool)] = &[
            (f(&[], &[]), "tcm-user/1/vol1/dlmfile//a", true),
            (f(&[], &[]), "tcm-user/1/vol1/rbd/pool/a", false),
            (f(&[], &[]), "tcm-user/1/vol1", false),
            (f(&[1], &[]), "tcm-user/1/x/dlmfile//a", true),
            (f(&[1], &[]), "tcm-user/2/x/dlmfile//a", false),
            (f(&[], &["vol*"]), "tcm-user/9/vol12/dlmfile//a", true),
            (f(&[], &["vol*"]), "tcm-user/9/avol/dlmfile//a", false),
            (f(&[2], &["a?", "b*"]), "tcm-user/2/ab/dlmfile//a", true),
            (f(&[2], &["a?", "b*"]), "tcm-user/2/abc/dlmfile//a", false),
            (f(&[2], &["a?", "b*"]), "tcm-user/2/b/dlmfile//a", true),
            (f(&[2], &["a?", "b*"]), "tcm-user/3/b/dlmfile//a", false),
        ];
        for (filter, name, want) in cases {
            assert_eq!(filter.matches(&id(name)), *want, "{filter:?} {name}");
        }
    }

    #[test]
    fn glob_table() {
        let cases = [
            ("*", "", true),
            ("*", "abc", true),
            ("a*c", "abbbc", true),
            ("a*c", "abcd", false),
            ("*b*", "abc", true),
            ("?", "", false),
            ("??", "ab", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXcYb", false),
            ("vol", "vol", true),
            ("vol", "vol1", false),
            ("**x", "x", true),
        ];
        for (g, n, want) in cases {
            assert_eq!(Glob::new(g).unwrap().matches(n), want, "{g} vs {n}");
        }
        assert!(Glob::new("a/b").is_err());
    }

    /// A reference matcher: dynamic programming over all prefixes.
    fn reference(p: &[char], n: &[char]) -> bool {
        let mut dp = vec![vec![false; n.len() + 1]; p.len() + 1];
        dp[0][0] = true;
        for i in 1..=p.len() {
            for j in 0..=n.len() {
                dp[i][j] = match p[i - 1] {
                    '*' => dp[i - 1][j] || (j > 0 && dp[i][j - 1]),
                    '?' => j > 0 && dp[i - 1][j - 1],
                    c => j > 0 && dp[i - 1][j - 1] && n[j - 1] == c,
                };
            }
        }
        dp[p.len()][n.len()]
    }

    proptest! {
        #[test]
        fn glob_agrees_with_reference(g in "[ab*?]{1,8}", n in "[ab]{0,10}") {
            let pc: Vec<char> = g.chars().collect();
            let nc: Vec<char> = n.chars().collect();
            prop_assert_eq!(Glob::new(&g).unwrap().matches(&n), reference(&pc, &nc));
        }

        #[test]
        fn literal_glob_matches_only_itself(a in "[a-z0-9_]{1,12}", b in "[a-z0-9_]{1,12}") {
            let g = Glob::new(&a).unwrap();
            prop_assert!(g.matches(&a));
            prop_assert_eq!(g.matches(&b), a == b);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,120}") {
            let _ = Config::parse(&s, Path::new("x"));
        }
    }
}
