//! The per-device configuration string of the `dlmfile` subtype.
//!
//! `dev_config` is `dlmfile/<image path>[;key=value]...`; the uio name carries
//! it as `<subtype>/<cfgstring>`, so the cfgstring is `<path>[;key=value]...`
//! (`dev_config=dlmfile//srv/vol1.img;direct=0` → cfgstring
//! `/srv/vol1.img;direct=0`). The kernel splits `control` writes at commas
//! and rtslib rejects `:`, so neither can appear; `;` separates options and
//! therefore cannot appear in paths.
//!
//! Keys (each at most once, order free):
//!
//! | key | values | default | meaning |
//! |---|---|---|---|
//! | `direct` | `0`/`1` | `1` | open the image with O_DIRECT (shared storage: no page cache between nodes) |
//! | `grow` | `0`/`1` | `0` | a `dev_size` larger than the image extends the file; otherwise it is refused |
//! | `ro` | `0`/`1` | `0` | open read-only and report the LU write-protected; excludes `grow=1` |
//! | `state` | absolute path | `<image>.tcmu-prd-state` | durable PR state store (must be on storage every node sees): a file, or a block device of at least 512 KiB (a small shared LUN) |
//! | `serial` | 1–32 of `[A-Za-z0-9._-]` | from the state store | unit serial number (VPD 0x80) and seed of the NAA/T10 designators; set it to keep an LU's identity when the image moves |
//!
//! No separate `lu=` key: the serial is the one identity input, so two keys
//! cannot disagree.

use std::fmt;
use std::path::{Path, PathBuf};

/// The handler subtype this daemon serves.
pub const SUBTYPE: &str = "dlmfile";
/// Suffix of the default state store path.
pub const STATE_SUFFIX: &str = ".tcmu-prd-state";
/// Longest `serial=` value (VPD 0x80 kept short enough for T10 designators).
pub const SERIAL_MAX: usize = 32;

/// Each cfgstring key with its values and meaning, in the order of the
/// table above: the source of the D-Bus `ConfigDesc` text.
pub const KEYS: &[(&str, &str)] = &[
    (
        "direct=0|1",
        "open the image with O_DIRECT (default 1; keep 1 on shared storage)",
    ),
    (
        "grow=0|1",
        "a size larger than the image file extends it (default 0: refused)",
    ),
    (
        "ro=0|1",
        "read-only LU, reported write-protected (default 0; excludes grow=1)",
    ),
    (
        "state=PATH",
        "PR state store, absolute, on storage every node sees (default <image>.tcmu-prd-state)",
    ),
    (
        "serial=S",
        "unit serial, 1-32 of A-Z a-z 0-9 . _ - (default: kept in the state store)",
    ),
];

/// A parsed device configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The backing image (regular file or block device), absolute.
    pub image: PathBuf,
    /// Open with O_DIRECT.
    pub direct: bool,
    /// Let `dev_size` grow the image file.
    pub grow: bool,
    /// Read-only LU.
    pub read_only: bool,
    /// Durable PR state store, absolute.
    pub state: PathBuf,
    /// LU serial override.
    pub serial: Option<String>,
}

/// Why a configuration string was rejected. The message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CfgError {
    /// `dev_config` does not start with `dlmfile/`.
    #[error("subtype {0:?} is not {SUBTYPE}")]
    WrongSubtype(String),
    /// The image path is empty.
    #[error("image path is empty (expected {SUBTYPE}/<absolute path>[;key=value]...)")]
    EmptyPath,
    /// A path is not absolute.
    #[error("{key}: path {path:?} is not absolute")]
    RelativePath {
        /// `path` for the image, or the key.
        key: String,
        /// The path given.
        path: String,
    },
    /// An option without `=`.
    #[error("option {0:?} is not key=value")]
    NotKeyValue(String),
    /// An unknown key.
    #[error("unknown key {0:?} (known: direct, grow, ro, state, serial)")]
    UnknownKey(String),
    /// A key given twice.
    #[error("key {0:?} given twice")]
    Duplicate(String),
    /// A value the key does not accept.
    #[error("{key}: bad value {value:?}: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is accepted.
        why: &'static str,
    },
    /// Options that contradict each other.
    #[error("{0}")]
    Conflict(&'static str),
    /// A character the kernel or rtslib cannot carry.
    #[error("character {0:?} cannot appear in dev_config")]
    BadChar(char),
}

impl DeviceConfig {
    /// Parses a full `dev_config` (`dlmfile/<cfgstring>`), e.g. the DEV_CFG of
    /// a RECONFIG_DEVICE event.
    pub fn parse_dev_config(dev_config: &str) -> Result<Self, CfgError> {
        let dev_config = dev_config.trim_end_matches('\n');
        match dev_config.split_once('/') {
            Some((SUBTYPE, cfg)) => Self::parse(cfg),
            Some((other, _)) => Err(CfgError::WrongSubtype(other.into())),
            None => Err(CfgError::WrongSubtype(dev_config.into())),
        }
    }

    /// Parses the cfgstring (after `dlmfile/`): `<path>[;key=value]...`.
    pub fn parse(cfgstring: &str) -> Result<Self, CfgError> {
        if let Some(c) = cfgstring
            .chars()
            .find(|c| matches!(c, ',' | ':' | '\0' | '\n'))
        {
            return Err(CfgError::BadChar(c));
        }
        let mut parts = cfgstring.split(';');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(CfgError::EmptyPath);
        }
        let image = absolute("path", path)?;
        let mut direct = None;
        let mut grow = None;
        let mut ro = None;
        let mut state = None;
        let mut serial = None;
        for opt in parts {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| CfgError::NotKeyValue(opt.into()))?;
            let dup = || CfgError::Duplicate(key.into());
            match key {
                "direct" => once(&mut direct, bool01(key, value)?).ok_or_else(dup)?,
                "grow" => once(&mut grow, bool01(key, value)?).ok_or_else(dup)?,
                "ro" => once(&mut ro, bool01(key, value)?).ok_or_else(dup)?,
                "state" => once(&mut state, absolute(key, value)?).ok_or_else(dup)?,
                "serial" => once(&mut serial, serial_value(value)?).ok_or_else(dup)?,
                _ => return Err(CfgError::UnknownKey(key.into())),
            }
        }
        let read_only = ro.unwrap_or(false);
        let grow = grow.unwrap_or(false);
        if read_only && grow {
            return Err(CfgError::Conflict("ro=1 and grow=1 exclude each other"));
        }
        let state = state.unwrap_or_else(|| default_state(&image));
        if state == image {
            return Err(CfgError::Conflict(
                "state: the state store cannot be the image itself",
            ));
        }
        Ok(DeviceConfig {
            image,
            direct: direct.unwrap_or(true),
            grow,
            read_only,
            state,
            serial,
        })
    }
}

/// `<image>.tcmu-prd-state`, beside the image.
#[must_use]
pub fn default_state(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(STATE_SUFFIX);
    PathBuf::from(s)
}

/// The canonical cfgstring: every key spelled out, in a fixed order (used
/// for logs and the D-Bus interface; parses back to the same config).
impl fmt::Display for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};direct={};grow={};ro={};state={}",
            self.image.display(),
            u8::from(self.direct),
            u8::from(self.grow),
            u8::from(self.read_only),
            self.state.display()
        )?;
        if let Some(s) = &self.serial {
            write!(f, ";serial={s}")?;
        }
        Ok(())
    }
}

fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

fn bool01(key: &str, value: &str) -> Result<bool, CfgError> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(CfgError::BadValue {
            key: key.into(),
            value: value.into(),
            why: "expected 0 or 1",
        }),
    }
}

fn absolute(key: &str, path: &str) -> Result<PathBuf, CfgError> {
    if path.is_empty() {
        return Err(CfgError::BadValue {
            key: key.into(),
            value: String::new(),
            why: "empty path",
        });
    }
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(CfgError::RelativePath {
            key: key.into(),
            path: path.into(),
        });
    }
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(CfgError::BadValue {
            key: key.into(),
            value: path.into(),
            why: "no .. components",
        });
    }
    Ok(p)
}

fn serial_value(v: &str) -> Result<String, CfgError> {
    let ok = !v.is_empty()
        && v.len() <= SERIAL_MAX
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(v.into())
    } else {
        Err(CfgError::BadValue {
            key: "serial".into(),
            value: v.into(),
            why: "1-32 characters of A-Z a-z 0-9 . _ -",
        })
    }
}

/// Checks a configuration against the filesystem: the image exists and is a
/// regular file or block device, and the state store's directory exists.
/// Used before answering ADDED_DEVICE (a failure becomes a non-zero status)
/// and by CheckConfig. The message names the key and path.
pub fn check(cfg: &DeviceConfig) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta =
        std::fs::metadata(&cfg.image).map_err(|e| format!("path {}: {e}", cfg.image.display()))?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(format!(
            "path {}: not a regular file or block device",
            cfg.image.display()
        ));
    }
    if !cfg.read_only && meta.permissions().readonly() {
        return Err(format!(
            "path {}: image is not writable (set ro=1 to export it read-only)",
            cfg.image.display()
        ));
    }
    if cfg.grow && ft.is_block_device() {
        return Err(format!(
            "grow=1: {} is a block device and cannot grow",
            cfg.image.display()
        ));
    }
    match std::fs::metadata(&cfg.state) {
        // A raw shared disk (no cluster file system) holds the state too.
        Ok(m) if m.file_type().is_block_device() => {
            let need = 2 * crate::cluster::store::SLOT_SIZE as u64;
            let size = std::fs::File::open(&cfg.state)
                .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
                .map_err(|e| format!("state {}: {e}", cfg.state.display()))?;
            if size < need {
                return Err(format!(
                    "state {}: block device of {size} bytes, the state store needs {need}",
                    cfg.state.display()
                ));
            }
        }
        Ok(m) if !m.is_file() => {
            return Err(format!(
                "state {}: exists and is neither a regular file nor a block device",
                cfg.state.display()
            ));
        }
        Ok(_) => {}
        Err(_) => {
            let dir = cfg.state.parent().unwrap_or(Path::new("/"));
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                        "state {}: {} is not a directory",
                        cfg.state.display(),
                        dir.display()
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "state {}: directory {}: {e}",
                        cfg.state.display(),
                        dir.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_table_is_what_parse_knows() {
        for (key, _) in KEYS {
            let name = key.split('=').next().unwrap();
            let value = match name {
                "state" => "/s",
                "serial" => "S1",
                _ => "0",
            };
            let r = DeviceConfig::parse(&format!("/a;{name}={value}"));
            assert!(r.is_ok(), "{name}: {r:?}");
            let unknown = CfgError::UnknownKey("x".into()).to_string();
            assert!(unknown.contains(name), "{unknown:?} lacks {name}");
        }
        assert_eq!(KEYS.len(), 5);
    }

    #[test]
    fn defaults() {
        let c = DeviceConfig::parse("/srv/vol1.img").unwrap();
        assert_eq!(
            c,
            DeviceConfig {
                image: "/srv/vol1.img".into(),
                direct: true,
                grow: false,
                read_only: false,
                state: "/srv/vol1.img.tcmu-prd-state".into(),
                serial: None,
            }
        );
    }

    #[test]
    fn all_keys() {
        let c = DeviceConfig::parse(
            "/srv/a.img;serial=LU-7;state=/shared/a.state;ro=1;direct=0;grow=0",
        )
        .unwrap();
        assert!(!c.direct && c.read_only && !c.grow);
        assert_eq!(c.state, PathBuf::from("/shared/a.state"));
        assert_eq!(c.serial.as_deref(), Some("LU-7"));
    }

    #[test]
    fn dev_config_needs_our_subtype() {
        assert_eq!(
            DeviceConfig::parse_dev_config("dlmfile//srv/a.img;grow=1\n")
                .unwrap()
                .image,
            PathBuf::from("/srv/a.img")
        );
        assert_eq!(
            DeviceConfig::parse_dev_config("rbd/pool/img"),
            Err(CfgError::WrongSubtype("rbd".into()))
        );
        assert!(DeviceConfig::parse_dev_config("dlmfile").is_err());
    }

    #[test]
    fn rejections_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("", "image path is empty"),
            (";direct=1", "image path is empty"),
            ("srv/a.img", "path: path \"srv/a.img\" is not absolute"),
            ("/srv/../etc/a", "path: bad value"),
            ("/a;direct", "option \"direct\" is not key=value"),
            ("/a;fast=1", "unknown key \"fast\""),
            ("/a;direct=1;direct=0", "key \"direct\" given twice"),
            ("/a;direct=yes", "direct: bad value \"yes\""),
            ("/a;grow=2", "grow: bad value"),
            ("/a;ro=", "ro: bad value"),
            ("/a;state=", "state: bad value \"\": empty path"),
            ("/a;state=rel/x", "state: path \"rel/x\" is not absolute"),
            ("/a;state=/a", "state: the state store cannot be the image"),
            ("/a;serial=", "serial: bad value"),
            ("/a;serial=has space", "serial: bad value"),
            (
                "/a;serial=123456789012345678901234567890123",
                "serial: bad value",
            ),
            ("/a;ro=1;grow=1", "exclude each other"),
            ("/a,b", "character ','"),
            ("/a;state=/x:y", "character ':'"),
        ];
        for (input, want) in cases {
            let e = DeviceConfig::parse(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input:?}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn check_against_the_filesystem() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("a.img");
        let mk = |s: String| DeviceConfig::parse(&s).unwrap();
        let e = check(&mk(img.display().to_string())).unwrap_err();
        assert!(e.starts_with(&format!("path {}", img.display())), "{e}");
        std::fs::write(&img, [0u8; 512]).unwrap();
        check(&mk(img.display().to_string())).unwrap();
        // a directory is not an image
        let e = check(&mk(t.path().display().to_string() + "/")).unwrap_err();
        assert!(e.contains("not a regular file or block device"), "{e}");
        // state directory missing
        let e = check(&mk(format!(
            "{};state=/nonexistent-dir-xyz/s",
            img.display()
        )))
        .unwrap_err();
        assert!(
            e.starts_with("state /nonexistent-dir-xyz/s: directory"),
            "{e}"
        );
        // state path is a directory
        let e = check(&mk(format!(
            "{};state={}",
            img.display(),
            t.path().display()
        )))
        .unwrap_err();
        assert!(
            e.contains("exists and is neither a regular file nor a block device"),
            "{e}"
        );
        // read-only image needs ro=1
        let mut p = std::fs::metadata(&img).unwrap().permissions();
        p.set_readonly(true);
        std::fs::set_permissions(&img, p).unwrap();
        let e = check(&mk(img.display().to_string())).unwrap_err();
        assert!(e.contains("ro=1"), "{e}");
        check(&mk(format!("{};ro=1", img.display()))).unwrap();
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = DeviceConfig::parse(&s);
            let _ = DeviceConfig::parse_dev_config(&s);
        }

        #[test]
        fn display_round_trips(
            path in "(/[A-Za-z0-9_.-]{1,12}){1,4}",
            direct: bool, grow: bool, ro: bool,
            state in proptest::option::of("(/[A-Za-z0-9_-]{1,12}){1,3}"),
            serial in proptest::option::of("[A-Za-z0-9._-]{1,32}"),
        ) {
            prop_assume!(!(ro && grow));
            prop_assume!(!path.split('/').any(|c| c == ".."));
            let mut s = format!("{path};direct={};grow={};ro={}", u8::from(direct), u8::from(grow), u8::from(ro));
            if let Some(st) = &state {
                prop_assume!(st != &path);
                s.push_str(&format!(";state={st}"));
            }
            if let Some(se) = &serial { s.push_str(&format!(";serial={se}")); }
            let c = DeviceConfig::parse(&s).unwrap();
            prop_assert_eq!((c.direct, c.grow, c.read_only), (direct, grow, ro));
            prop_assert_eq!(DeviceConfig::parse(&c.to_string()).unwrap(), c);
        }

        #[test]
        fn any_unknown_key_is_rejected_by_name(key in "[a-z]{1,10}") {
            prop_assume!(!["direct", "grow", "ro", "state", "serial"].contains(&key.as_str()));
            let e = DeviceConfig::parse(&format!("/a;{key}=1")).unwrap_err();
            prop_assert_eq!(e, CfgError::UnknownKey(key));
        }
    }
}
