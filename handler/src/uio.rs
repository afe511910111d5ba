//! Discovery of TCMU devices through `/sys/class/uio`.
//!
//! The kernel names each TCMU uio device
//! `tcm-user/<hba>/<device name>/<subtype>/<cfgstring>` and exposes one map
//! whose size the mmap must match exactly (DESIGN.md §1).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// The prefix the kernel puts on every TCMU uio device name.
pub const NAME_PREFIX: &str = "tcm-user";

/// The identity of a TCMU device, parsed from its uio name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcmuName {
    /// LIO's HBA index: the backstore lives in `core/user_<hba>/`.
    pub hba: u32,
    /// The backstore (device) name.
    pub name: String,
    /// The handler subtype, e.g. `dlmfile`.
    pub subtype: String,
    /// Everything after `<subtype>/`; may itself contain slashes.
    pub cfgstring: String,
}

/// Why a uio name or attribute could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name does not start with `tcm-user/`: not a TCMU device.
    #[error("not a TCMU device (name does not start with {NAME_PREFIX}/)")]
    NotTcmu,
    /// A part of the name is missing.
    #[error("uio name has no {0} field")]
    Missing(&'static str),
    /// The HBA field is not a number.
    #[error("uio name has a non-numeric hba field {0:?}")]
    BadHba(String),
}

impl TcmuName {
    /// Parses `tcm-user/<hba>/<name>/<subtype>/<cfgstring>`. The cfgstring may
    /// be empty (a backstore created without `dev_config`) and may contain `/`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let s = s.trim_end_matches('\n');
        let rest = s
            .strip_prefix(NAME_PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(NameError::NotTcmu)?;
        let mut parts = rest.splitn(4, '/');
        let hba = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(NameError::Missing("hba"))?;
        let hba = hba.parse().map_err(|_| NameError::BadHba(hba.into()))?;
        let name = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(NameError::Missing("device name"))?;
        // A backstore enabled without dev_config has neither subtype nor cfgstring.
        let subtype = parts.next().unwrap_or_default();
        let cfgstring = parts.next().unwrap_or_default();
        Ok(TcmuName {
            hba,
            name: name.into(),
            subtype: subtype.into(),
            cfgstring: cfgstring.into(),
        })
    }

    /// The backstore's directory under LIO's configfs root
    /// (`/sys/kernel/config/target` normally).
    #[must_use]
    pub fn configfs_dir(&self, target_root: &Path) -> PathBuf {
        target_root
            .join("core")
            .join(format!("user_{}", self.hba))
            .join(&self.name)
    }
}

impl fmt::Display for TcmuName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user_{}/{}", self.hba, self.name)
    }
}

/// A TCMU uio device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UioDevice {
    /// `uioN`.
    pub uio: String,
    /// N in `uioN`.
    pub minor: u32,
    /// What the name says.
    pub id: TcmuName,
    /// Size of map0 in bytes: the exact length to mmap.
    pub map_size: u64,
}

/// A uio entry that looked like ours but could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{uio}: {what}")]
pub struct DiscoverError {
    /// `uioN`.
    pub uio: String,
    /// What was wrong, naming the file or field.
    pub what: String,
}

/// Parses a sysfs map size such as `0x40800000`.
pub fn parse_map_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u64::from_str_radix(hex, 16).ok().filter(|&n| n > 0)
}

/// Reads one uio device directory (`<class>/uioN`). `Ok(None)` means the
/// device is not a TCMU device.
pub fn read_device(dir: &Path) -> Result<Option<UioDevice>, DiscoverError> {
    let uio = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let err = |what: String| DiscoverError {
        uio: uio.clone(),
        what,
    };
    let minor = uio
        .strip_prefix("uio")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| err("not named uioN".into()))?;
    let name =
        fs::read_to_string(dir.join("name")).map_err(|e| err(format!("reading name: {e}")))?;
    let id = match TcmuName::parse(&name) {
        Ok(id) => id,
        Err(NameError::NotTcmu) => return Ok(None),
        Err(e) => return Err(err(format!("name {:?}: {e}", name.trim_end()))),
    };
    let size_path = dir.join("maps/map0/size");
    let size =
        fs::read_to_string(&size_path).map_err(|e| err(format!("reading maps/map0/size: {e}")))?;
    let map_size = parse_map_size(&size).ok_or_else(|| {
        err(format!(
            "maps/map0/size {:?} is not a hex size",
            size.trim()
        ))
    })?;
    Ok(Some(UioDevice {
        uio,
        minor,
        id,
        map_size,
    }))
}

/// Lists the TCMU devices under a uio class directory (`/sys/class/uio`),
/// in minor order, with the entries that could not be read.
pub fn discover(class_dir: &Path) -> (Vec<UioDevice>, Vec<DiscoverError>) {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let Ok(entries) = fs::read_dir(class_dir) else {
        return (found, errors);
    };
    for entry in entries.flatten() {
        match read_device(&entry.path()) {
            Ok(Some(dev)) => found.push(dev),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    found.sort_by_key(|d| d.minor);
    (found, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_name_with_a_path_cfgstring() {
        let n = TcmuName::parse("tcm-user/1/vol1/dlmfile//srv/vol1.img\n").unwrap();
        assert_eq!(n.hba, 1);
        assert_eq!(n.name, "vol1");
        assert_eq!(n.subtype, "dlmfile");
        assert_eq!(n.cfgstring, "/srv/vol1.img");
        assert_eq!(n.to_string(), "user_1/vol1");
        assert_eq!(
            n.configfs_dir(Path::new("/sys/kernel/config/target")),
            Path::new("/sys/kernel/config/target/core/user_1/vol1")
        );
    }

    #[test]
    fn keeps_options_and_slashes_in_the_cfgstring() {
        let n = TcmuName::parse("tcm-user/12/v/dlmfile//a/b;direct=0;state=/x/y").unwrap();
        assert_eq!(n.cfgstring, "/a/b;direct=0;state=/x/y");
    }

    #[test]
    fn a_device_without_dev_config_has_empty_subtype() {
        let n = TcmuName::parse("tcm-user/3/bare").unwrap();
        assert_eq!((n.subtype.as_str(), n.cfgstring.as_str()), ("", ""));
    }

    #[test]
    fn rejects_foreign_and_malformed_names() {
        assert_eq!(TcmuName::parse("uio_pdrv_genirq"), Err(NameError::NotTcmu));
        assert_eq!(TcmuName::parse("tcm-user"), Err(NameError::NotTcmu));
        assert_eq!(TcmuName::parse("tcm-user/"), Err(NameError::Missing("hba")));
        assert_eq!(
            TcmuName::parse("tcm-user/x/v/dlmfile/"),
            Err(NameError::BadHba("x".into()))
        );
        assert_eq!(
            TcmuName::parse("tcm-user/1/"),
            Err(NameError::Missing("device name"))
        );
        assert_eq!(
            TcmuName::parse("tcm-user/99999999999/v"),
            Err(NameError::BadHba("99999999999".into()))
        );
    }

    #[test]
    fn map_sizes_are_hex() {
        assert_eq!(parse_map_size("0x40800000\n"), Some(0x4080_0000));
        assert_eq!(parse_map_size("40800000"), None);
        assert_eq!(parse_map_size("0x"), None);
        assert_eq!(parse_map_size("0x0"), None);
    }

    #[test]
    fn discovers_from_a_fake_class_dir() {
        let root = std::env::temp_dir().join(format!("tcmu-prd-uio-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mk = |uio: &str, name: &str, size: Option<&str>| {
            let d = root.join(uio);
            fs::create_dir_all(d.join("maps/map0")).unwrap();
            fs::write(d.join("name"), name).unwrap();
            if let Some(s) = size {
                fs::write(d.join("maps/map0/size"), s).unwrap();
            }
        };
        mk(
            "uio2",
            "tcm-user/1/b/dlmfile//b.img\n",
            Some("0x40800000\n"),
        );
        mk("uio0", "tcm-user/1/a/dlmfile//a.img\n", Some("0x1000\n"));
        mk("uio1", "some-other-driver\n", None);
        mk("uio3", "tcm-user/1/c/dlmfile//c.img\n", Some("garbage\n"));
        let (found, errors) = discover(&root);
        assert_eq!(
            found.iter().map(|d| d.uio.as_str()).collect::<Vec<_>>(),
            ["uio0", "uio2"]
        );
        assert_eq!(found[1].map_size, 0x4080_0000);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().starts_with("uio3: maps/map0/size"),
            "{}",
            errors[0]
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
