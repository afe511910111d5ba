//! `tcmu-prd export` / `unexport`: build or remove the per-initiator view
//! layout of an LU in LIO's configfs (DESIGN.md §2).
//!
//! Each initiator gets its own view: a TCMU backstore on the LU's image,
//! exported through its own TPG LUN, which only that initiator's ACL maps
//! (as mapped LUN 0 by default). tcm_loop has one initiator per TPG, so there
//! each initiator gets its own TPG. `attrib/pgr_support` is set to 0 so PR
//! commands reach tcmu-prd. Re-running `export` with the same arguments
//! changes nothing; adding an initiator adds just its view.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    /// LU name: prefix of the view backstores' names.
    pub lu: String,
    /// The shared image (file or block device) all views serve.
    pub image: PathBuf,
    /// `dev_size` in bytes; `None`: the image's size.
    pub size: Option<u64>,
    /// TCMU HBA index (`core/user_<hba>`).
    pub hba: u32,
    /// Extra cfgstring options, `key=value` each (joined with `;`).
    pub options: Vec<String>,
    /// Fabric and initiators.
    pub fabric: FabricSpec,
}

/// The fabric side of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FabricSpec {
    /// iSCSI: one target portal group, one ACL per initiator.
    Iscsi {
        /// Target IQN.
        target: String,
        /// TPG tag.
        tpg: u16,
        /// Initiator IQNs.
        initiators: Vec<String>,
        /// Portals (`ip:port`) to create if missing.
        portals: Vec<String>,
        /// The LUN number each initiator sees.
        mapped_lun: u64,
    },
    /// tcm_loop: one TPG per initiator (its nexus).
    Loopback {
        /// Target WWN (`naa.` + 16 hex digits).
        wwn: String,
        /// Initiator WWNs (`naa.` + 16 hex digits).
        initiators: Vec<String>,
    },
}

/// One view as laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Initiator port name.
    pub initiator: String,
    /// Backstore directory (`core/user_<hba>/<name>`).
    pub backstore: PathBuf,
    /// TPG LUN directory.
    pub tpg_lun: PathBuf,
}

/// A configfs step that failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An argument is unusable.
    #[error("{0}")]
    Invalid(String),
    /// A configfs operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { op, path, source }
}

/// `r`, with an error of kind `fine` (the work was already done) as success.
fn tolerate(
    r: io::Result<()>,
    fine: io::ErrorKind,
    op: &'static str,
    p: &Path,
) -> Result<(), ExportError> {
    match r {
        Err(e) if e.kind() != fine => Err(ExportError::Io {
            op,
            path: p.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn mkdir(p: &Path) -> Result<(), ExportError> {
    tolerate(fs::create_dir(p), io::ErrorKind::AlreadyExists, "mkdir", p)
}

fn mkdir_all(p: &Path) -> Result<(), ExportError> {
    fs::create_dir_all(p).map_err(io_at("mkdir", p))
}

fn write(p: &Path, v: &str) -> Result<(), ExportError> {
    fs::write(p, v).map_err(io_at("write", p))
}

fn rmdir(p: &Path) -> Result<(), ExportError> {
    tolerate(fs::remove_dir(p), io::ErrorKind::NotFound, "rmdir", p)
}

/// The view backstore name for an initiator on a target port: the LU name
/// and a short, stable hash, so adding initiators never renames views.
#[must_use]
pub fn view_name(lu: &str, target_port: &str, initiator: &str) -> String {
    let h = crc32c::crc32c(format!("{target_port}\n{initiator}").as_bytes());
    format!("{lu}-{h:08x}")
}

fn check_name(what: &str, s: &str) -> Result<(), ExportError> {
    if s.is_empty() || s.contains('/') || s.contains(char::is_whitespace) || s == "." || s == ".." {
        return Err(ExportError::Invalid(format!("invalid {what} {s:?}")));
    }
    Ok(())
}

/// At least one initiator, each passing `check`.
fn check_all(
    initiators: &[String],
    check: impl Fn(&str) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    if initiators.is_empty() {
        return Err(ExportError::Invalid(
            "at least one initiator is needed".into(),
        ));
    }
    initiators.iter().try_for_each(|i| check(i))
}

fn check_naa(what: &str, s: &str) -> Result<(), ExportError> {
    let ok = s
        .strip_prefix("naa.")
        .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ExportError::Invalid(format!(
            "{what} {s:?} is not naa. followed by 16 hex digits"
        )))
    }
}

impl ExportSpec {
    fn validate(&self) -> Result<(), ExportError> {
        check_name("LU name", &self.lu)?;
        let image = self.image.to_string_lossy();
        if !self.image.is_absolute() {
            return Err(ExportError::Invalid(format!(
                "image path {image:?} must be absolute"
            )));
        }
        if image.contains(',') || image.contains(';') {
            return Err(ExportError::Invalid(format!(
                "image path {image:?} must not contain ',' or ';' (configfs control syntax)"
            )));
        }
        for o in &self.options {
            if !o.contains('=') || o.contains(',') || o.contains(';') {
                return Err(ExportError::Invalid(format!(
                    "option {o:?} must be key=value without ',' or ';'"
                )));
            }
        }
        match &self.fabric {
            FabricSpec::Iscsi {
                target, initiators, ..
            } => {
                check_name("target IQN", target)?;
                check_all(initiators, |i| check_name("initiator name", i))
            }
            FabricSpec::Loopback { wwn, initiators } => {
                check_naa("loopback target WWN", wwn)?;
                check_all(initiators, |i| check_naa("loopback initiator", i))
            }
        }
    }

    fn control(&self) -> Result<String, ExportError> {
        let size = match self.size {
            Some(s) => s,
            None => fs::metadata(&self.image)
                .map_err(io_at("stat", &self.image))?
                .len(),
        };
        if size == 0 {
            return Err(ExportError::Invalid(format!(
                "image {} is empty: give --size",
                self.image.display()
            )));
        }
        let mut cfg = format!("dlmfile/{}", self.image.display());
        for o in &self.options {
            cfg.push(';');
            cfg.push_str(o);
        }
        // TCMU's default hw_max_sectors is 128 blocks (64 KiB); initiators
        // that ignore VPD 0xB0 (libiscsi, some hypervisors) send more and
        // get INVALID FIELD IN CDB. LIO's fileio allows 8 MiB; 8192 blocks
        // fit the default 1 GiB data area many times over.
        Ok(format!(
            "dev_config={cfg},dev_size={size},hw_max_sectors={EXPORT_MAX_SECTORS}"
        ))
    }
}

/// `hw_max_sectors` of the backstores `export` creates.
pub const EXPORT_MAX_SECTORS: u32 = 8192;

fn make_view(
    target_root: &Path,
    spec: &ExportSpec,
    name: &str,
    control: &str,
) -> Result<PathBuf, ExportError> {
    let hba = target_root.join("core").join(format!("user_{}", spec.hba));
    mkdir_all(&hba)?;
    let bs = hba.join(name);
    if bs.join("enable").exists()
        && fs::read_to_string(bs.join("enable")).is_ok_and(|s| s.trim() == "1")
    {
        return Ok(bs);
    }
    mkdir(&bs)?;
    write(&bs.join("control"), control)?;
    write(&bs.join("attrib/pgr_support"), "0")?;
    // LUN resets must reach us (they end SPC-2 reservations), and REPORT
    // TARGET PORT GROUPS is ours (RTPIs are cluster-wide, DESIGN.md §2).
    write(&bs.join("attrib/tmr_notification"), "1")?;
    write(&bs.join("attrib/alua_support"), "0")?;
    write(&bs.join("enable"), "1")?;
    Ok(bs)
}

/// The TPG LUN that already exports `bs`, or a new one with the lowest free number.
fn tpg_lun(tpg: &Path, bs: &Path) -> Result<PathBuf, ExportError> {
    let luns = tpg.join("lun");
    mkdir_all(&luns)?;
    let target = fs::canonicalize(bs).unwrap_or_else(|_| bs.to_path_buf());
    let mut used = Vec::new();
    for e in fs::read_dir(&luns)
        .map_err(io_at("read_dir", &luns))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("lun_")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        used.push(n);
        let linked = fs::read_dir(e.path())
            .map(|rd| {
                rd.flatten().any(|l| {
                    l.path().is_symlink()
                        && fs::canonicalize(l.path()).ok().as_deref() == Some(&target)
                })
            })
            .unwrap_or(false);
        if linked {
            return Ok(e.path());
        }
    }
    let n = (0..).find(|n| !used.contains(n)).unwrap_or(0);
    let lun = luns.join(format!("lun_{n}"));
    mkdir(&lun)?;
    let link = lun.join(bs.file_name().unwrap_or_default());
    symlink(bs, &link).map_err(io_at("symlink", &link))?;
    Ok(lun)
}

fn map_lun(acl: &Path, mapped: u64, lun: &Path) -> Result<(), ExportError> {
    mkdir_all(acl)?;
    let m = acl.join(format!("lun_{mapped}"));
    if m.exists() {
        let target = fs::canonicalize(lun).unwrap_or_else(|_| lun.to_path_buf());
        let same = fs::read_dir(&m)
            .map(|rd| {
                rd.flatten().any(|l| {
                    l.path().is_symlink()
                        && fs::canonicalize(l.path()).ok().as_deref() == Some(&target)
                })
            })
            .unwrap_or(false);
        if same {
            return Ok(());
        }
        return Err(ExportError::Invalid(format!(
            "{} already maps another LUN",
            m.display()
        )));
    }
    mkdir(&m)?;
    let link = m.join("lun");
    symlink(lun, &link).map_err(io_at("symlink", &link))
}

/// Creates (or completes) the layout; returns the views.
pub fn export(target_root: &Path, spec: &ExportSpec) -> Result<Vec<View>, ExportError> {
    spec.validate()?;
    let control = spec.control()?;
    let mut views = Vec::new();
    match &spec.fabric {
        FabricSpec::Iscsi {
            target,
            tpg,
            initiators,
            portals,
            mapped_lun,
        } => {
            let tpg_dir = target_root
                .join("iscsi")
                .join(target)
                .join(format!("tpgt_{tpg}"));
            mkdir_all(&tpg_dir)?;
            // One ACL per initiator: demo mode would let anyone reach every view.
            let gna = tpg_dir.join("attrib/generate_node_acls");
            if gna.exists() {
                write(&gna, "0")?;
            }
            for p in portals {
                mkdir_all(&tpg_dir.join("np").join(p))?;
            }
            let port = format!("iscsi/{target}/tpgt_{tpg}");
            for ini in initiators {
                let name = view_name(&spec.lu, &port, ini);
                let bs = make_view(target_root, spec, &name, &control)?;
                let lun = tpg_lun(&tpg_dir, &bs)?;
                map_lun(&tpg_dir.join("acls").join(ini), *mapped_lun, &lun)?;
                views.push(View {
                    initiator: ini.clone(),
                    backstore: bs,
                    tpg_lun: lun,
                });
            }
            let enable = tpg_dir.join("enable");
            if enable.exists() {
                write(&enable, "1")?;
            }
        }
        FabricSpec::Loopback { wwn, initiators } => {
            let wwn_dir = target_root.join("loopback").join(wwn);
            for (k, ini) in initiators.iter().enumerate() {
                let tpg_dir = wwn_dir.join(format!("tpgt_{}", k + 1));
                let port = format!("loopback/{wwn}/tpgt_{}", k + 1);
                let name = view_name(&spec.lu, &port, ini);
                let bs = make_view(target_root, spec, &name, &control)?;
                mkdir_all(&tpg_dir)?;
                // The nexus first: tcm_loop scans a LUN when it is linked,
                // and a scan without a nexus fails and is not retried.
                let nexus = tpg_dir.join("nexus");
                let current = fs::read_to_string(&nexus).unwrap_or_default();
                if current.trim() != ini.as_str() {
                    write(&nexus, ini)?;
                }
                let lun = tpg_lun(&tpg_dir, &bs)?;
                views.push(View {
                    initiator: ini.clone(),
                    backstore: bs,
                    tpg_lun: lun,
                });
            }
        }
    }
    Ok(views)
}

fn remove_links(dir: &Path) -> Result<(), ExportError> {
    if let Ok(rd) = fs::read_dir(dir) {
        for l in rd.flatten() {
            if l.path().is_symlink() {
                fs::remove_file(l.path()).map_err(io_at("unlink", &l.path()))?;
            }
        }
    }
    Ok(())
}

/// Removes the views of `spec`'s initiators (ACL mappings, TPG LUNs,
/// backstores). Leaves targets, TPGs and ACLs that other things use.
pub fn unexport(target_root: &Path, spec: &ExportSpec) -> Result<(), ExportError> {
    spec.validate()?;
    let hba = target_root.join("core").join(format!("user_{}", spec.hba));
    let mut ports = Vec::new();
    match &spec.fabric {
        FabricSpec::Iscsi {
            target,
            tpg,
            initiators,
            mapped_lun,
            ..
        } => {
            let tpg_dir = target_root
                .join("iscsi")
                .join(target)
                .join(format!("tpgt_{tpg}"));
            let port = format!("iscsi/{target}/tpgt_{tpg}");
            for ini in initiators {
                let m = tpg_dir
                    .join("acls")
                    .join(ini)
                    .join(format!("lun_{mapped_lun}"));
                remove_links(&m)?;
                rmdir(&m)?;
                ports.push((tpg_dir.clone(), view_name(&spec.lu, &port, ini)));
            }
        }
        FabricSpec::Loopback { wwn, initiators } => {
            for (k, ini) in initiators.iter().enumerate() {
                let tpg_dir = target_root
                    .join("loopback")
                    .join(wwn)
                    .join(format!("tpgt_{}", k + 1));
                let port = format!("loopback/{wwn}/tpgt_{}", k + 1);
                ports.push((tpg_dir, view_name(&spec.lu, &port, ini)));
            }
        }
    }
    for (tpg_dir, name) in ports {
        let bs = hba.join(&name);
        if !bs.exists() {
            continue;
        }
        let lun = tpg_lun_of(&tpg_dir, &bs);
        if let Some(lun) = lun {
            remove_links(&lun)?;
            rmdir(&lun)?;
        }
        rmdir(&bs)?;
    }
    Ok(())
}

fn tpg_lun_of(tpg: &Path, bs: &Path) -> Option<PathBuf> {
    let target = fs::canonicalize(bs).ok()?;
    fs::read_dir(tpg.join("lun"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|lun| {
            fs::read_dir(lun)
                .map(|rd| {
                    rd.flatten().any(|l| {
                        l.path().is_symlink()
                            && fs::canonicalize(l.path()).ok().as_deref() == Some(&target)
                    })
                })
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexus::{self, ViewNexus};

    fn root(name: &str) -> PathBuf {
        let r = std::env::temp_dir().join(format!("tcmu-prd-export-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&r);
        fs::create_dir_all(&r).unwrap();
        r
    }

    /// A fake configfs does not create attrib/ on mkdir; do what the kernel would.
    fn prepare_backstores(r: &Path, spec: &ExportSpec, ports: &[String], inis: &[String]) {
        for (p, i) in ports.iter().zip(inis) {
            let bs = r
                .join(format!("core/user_{}", spec.hba))
                .join(view_name(&spec.lu, p, i));
            fs::create_dir_all(bs.join("attrib")).unwrap();
        }
    }

    #[test]
    fn iscsi_export_gives_each_initiator_one_unambiguous_view() {
        let r = root("iscsi");
        let img = r.join("lu.img");
        fs::write(&img, vec![0u8; 4096]).unwrap();
        let inis = vec![
            "iqn.2007-10.com.example:a".to_string(),
            "iqn.2007-10.com.example:b".to_string(),
        ];
        let spec = ExportSpec {
            lu: "lu1".into(),
            image: img.clone(),
            size: None,
            hba: 3,
            options: vec!["direct=0".into()],
            fabric: FabricSpec::Iscsi {
                target: "iqn.2003-01.org.example:t".into(),
                tpg: 1,
                initiators: inis.clone(),
                portals: vec!["127.0.0.1:3260".into()],
                mapped_lun: 0,
            },
        };
        let port = "iscsi/iqn.2003-01.org.example:t/tpgt_1".to_string();
        prepare_backstores(&r, &spec, &[port.clone(), port.clone()], &inis);
        let views = export(&r, &spec).unwrap();
        assert_eq!(views.len(), 2);
        let control = fs::read_to_string(views[0].backstore.join("control")).unwrap();
        assert_eq!(
            control,
            format!(
                "dev_config=dlmfile/{};direct=0,dev_size=4096,hw_max_sectors=8192",
                img.display()
            )
        );
        assert_eq!(
            fs::read_to_string(views[0].backstore.join("attrib/pgr_support")).unwrap(),
            "0"
        );
        for (v, ini) in views.iter().zip(&inis) {
            match nexus::discover(&r, &v.backstore) {
                ViewNexus::One(n) => {
                    assert_eq!(&n.initiator, ini);
                    assert_eq!(n.mapped_lun, 0);
                }
                other => panic!("view of {ini}: {other:?}"),
            }
        }
        // Idempotent.
        assert_eq!(export(&r, &spec).unwrap(), views);
        // configfs removes attribute files and default groups with the item.
        for v in &views {
            fs::remove_dir_all(v.backstore.join("attrib")).unwrap();
            for f in ["control", "enable"] {
                fs::remove_file(v.backstore.join(f)).unwrap();
            }
        }
        unexport(&r, &spec).unwrap();
        for v in &views {
            assert!(!v.backstore.exists() && !v.tpg_lun.exists());
        }
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn loopback_export_uses_one_tpg_per_initiator() {
        let r = root("loop");
        let inis = vec![
            "naa.5001405000000002".to_string(),
            "naa.5001405000000003".to_string(),
        ];
        let spec = ExportSpec {
            lu: "lu2".into(),
            image: "/srv/lu2.img".into(),
            size: Some(1 << 20),
            hba: 1,
            options: vec![],
            fabric: FabricSpec::Loopback {
                wwn: "naa.5001405000000001".into(),
                initiators: inis.clone(),
            },
        };
        let ports: Vec<String> = (1..=2)
            .map(|k| format!("loopback/naa.5001405000000001/tpgt_{k}"))
            .collect();
        prepare_backstores(&r, &spec, &ports, &inis);
        let views = export(&r, &spec).unwrap();
        for (v, ini) in views.iter().zip(&inis) {
            let ViewNexus::One(n) = nexus::discover(&r, &v.backstore) else {
                panic!("ambiguous")
            };
            assert_eq!(&n.initiator, ini);
        }
        assert_ne!(views[0].tpg_lun.parent(), views[1].tpg_lun.parent());
        fs::remove_dir_all(&r).unwrap();
    }

    #[test]
    fn bad_arguments_are_refused_before_touching_configfs() {
        let r = root("bad");
        let mut spec = ExportSpec {
            lu: "lu".into(),
            image: "relative.img".into(),
            size: Some(1),
            hba: 1,
            options: vec![],
            fabric: FabricSpec::Loopback {
                wwn: "naa.1".into(),
                initiators: vec![],
            },
        };
        assert!(
            export(&r, &spec)
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
        spec.image = "/a,b".into();
        assert!(export(&r, &spec).unwrap_err().to_string().contains("','"));
        spec.image = "/a".into();
        assert!(
            export(&r, &spec)
                .unwrap_err()
                .to_string()
                .contains("16 hex")
        );
        spec.lu = "a/b".into();
        assert!(
            export(&r, &spec)
                .unwrap_err()
                .to_string()
                .contains("LU name")
        );
        assert_eq!(fs::read_dir(&r).unwrap().count(), 0);
        fs::remove_dir_all(&r).unwrap();
    }
}
