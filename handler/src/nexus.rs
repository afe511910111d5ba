//! Which I_T nexus a view serves, learned from LIO's configfs (DESIGN.md §2).
//!
//! A TCMU ring entry never says who sent a command, so each view (one TCMU
//! backstore) must be exported through exactly one TPG LUN that exactly one
//! initiator reaches: an iSCSI/FC ACL mapping that LUN, or a tcm_loop TPG
//! (which has a single initiator, its `nexus`). Anything else is ambiguous:
//! I/O is still served, but PR OUT and RESERVE are refused, and the reason
//! given here tells the admin how to fix the layout.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// A target port: fabric module, target WWN and TPG tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetPort {
    /// configfs fabric directory name: `iscsi`, `loopback`, `qla2xxx`, ...
    pub fabric: String,
    /// Target WWN (IQN, naa., WWPN).
    pub wwn: String,
    /// TPG tag.
    pub tpgt: u16,
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/tpgt_{}", self.fabric, self.wwn, self.tpgt)
    }
}

/// The one I_T nexus of an unambiguous view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Initiator port name as LIO knows it (ACL name, or tcm_loop's nexus).
    pub initiator: String,
    /// The target port the view is exported through.
    pub target: TargetPort,
    /// The TPG LUN number.
    pub tpg_lun: u64,
    /// The LUN the initiator sees (the ACL's mapped LUN; tcm_loop: the TPG LUN).
    pub mapped_lun: u64,
}

impl fmt::Display for Nexus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} lun {}",
            self.initiator, self.target, self.mapped_lun
        )
    }
}

/// What configfs says about a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewNexus {
    /// No fabric LUN points at the backstore (yet).
    NotExported,
    /// Exactly one initiator reaches the view through one target port.
    One(Nexus),
    /// Zero or several initiators, or several target ports: the string says
    /// why and how to fix it.
    Ambiguous(String),
}

/// Where a backstore is exported: one TPG LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FabricLun {
    target: TargetPort,
    lun: u64,
    dir: PathBuf,
}

fn canon(p: &Path) -> Option<PathBuf> {
    fs::canonicalize(p).ok()
}

fn subdirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.is_symlink())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether directory `dir` holds a symlink resolving to `to`.
fn links_to(dir: &Path, to: &Path) -> bool {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().is_symlink() && canon(&e.path()).as_deref() == Some(to))
        })
        .unwrap_or(false)
}

fn numbered(p: &Path, prefix: &str) -> Option<u64> {
    name_of(p).strip_prefix(prefix)?.parse().ok()
}

fn fabric_luns(target_root: &Path, backstore: &Path) -> Vec<FabricLun> {
    let mut found = Vec::new();
    for fabric in subdirs(target_root) {
        let fname = name_of(&fabric);
        if fname == "core" {
            continue;
        }
        for wwn in subdirs(&fabric) {
            for tpg in subdirs(&wwn) {
                let Some(tpgt) = numbered(&tpg, "tpgt_").and_then(|n| u16::try_from(n).ok()) else {
                    continue;
                };
                for lun in subdirs(&tpg.join("lun")) {
                    let Some(n) = numbered(&lun, "lun_") else {
                        continue;
                    };
                    if links_to(&lun, backstore) {
                        found.push(FabricLun {
                            target: TargetPort {
                                fabric: fname.clone(),
                                wwn: name_of(&wwn),
                                tpgt,
                            },
                            lun: n,
                            dir: canon(&lun).unwrap_or(lun),
                        });
                    }
                }
            }
        }
    }
    found
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// Finds the nexus of the view whose backstore directory is `backstore`
/// (`<target_root>/core/user_<hba>/<name>`); `target_root` is LIO's configfs
/// root, normally `/sys/kernel/config/target`.
#[must_use]
pub fn discover(target_root: &Path, backstore: &Path) -> ViewNexus {
    let Some(bs) = canon(backstore) else {
        return ViewNexus::Ambiguous(format!(
            "backstore {} does not exist in configfs",
            backstore.display()
        ));
    };
    let luns = fabric_luns(target_root, &bs);
    let fl = match luns.as_slice() {
        [] => return ViewNexus::NotExported,
        [one] => one,
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|l| format!("{} lun {}", l.target, l.lun))
                .collect();
            return ViewNexus::Ambiguous(format!(
                "exported through {} target ports ({}): export each view through one TPG LUN only, and give each target port its own views",
                many.len(),
                list.join(", ")
            ));
        }
    };
    let tpg = fl
        .dir
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if fl.target.fabric == "loopback" {
        return match read_trim(&tpg.join("nexus")) {
            Some(ini) if !ini.is_empty() && ini != "null" => ViewNexus::One(Nexus {
                initiator: ini,
                target: fl.target.clone(),
                tpg_lun: fl.lun,
                mapped_lun: fl.lun,
            }),
            _ => ViewNexus::Ambiguous(format!(
                "tcm_loop TPG {} has no nexus: write the initiator's naa name to its nexus file",
                fl.target
            )),
        };
    }
    if read_trim(&tpg.join("attrib/generate_node_acls")).as_deref() == Some("1") {
        return ViewNexus::Ambiguous(format!(
            "TPG {} is in demo mode (generate_node_acls=1): any initiator can reach the view; set generate_node_acls=0 and create one ACL per initiator, each mapping its own view",
            fl.target
        ));
    }
    let mut mapped = Vec::new();
    for acl in subdirs(&tpg.join("acls")) {
        for mlun in subdirs(&acl) {
            let Some(n) = numbered(&mlun, "lun_") else {
                continue;
            };
            if links_to(&mlun, &fl.dir) {
                mapped.push((name_of(&acl), n));
            }
        }
    }
    match mapped.as_slice() {
        [] => ViewNexus::Ambiguous(format!(
            "no ACL of TPG {} maps lun {}: create the initiator's ACL with a mapped LUN to it",
            fl.target, fl.lun
        )),
        [(ini, n)] => ViewNexus::One(Nexus {
            initiator: ini.clone(),
            target: fl.target.clone(),
            tpg_lun: fl.lun,
            mapped_lun: *n,
        }),
        many => {
            let mut names: Vec<&str> = many.iter().map(|(i, _)| i.as_str()).collect();
            names.dedup();
            ViewNexus::Ambiguous(format!(
                "{} ACL mappings of TPG {} lun {} ({}): give each initiator its own view (tcmu-prd export does this)",
                many.len(),
                fl.target,
                fl.lun,
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("tcmu-prd-nexus-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("core/user_1/v1")).unwrap();
            fs::create_dir_all(root.join("core/user_1/v2")).unwrap();
            Tree(root)
        }
        fn bs(&self, name: &str) -> PathBuf {
            self.0.join("core/user_1").join(name)
        }
        fn tpg(&self, fabric: &str, wwn: &str) -> PathBuf {
            let t = self.0.join(fabric).join(wwn).join("tpgt_1");
            fs::create_dir_all(t.join("attrib")).unwrap();
            fs::create_dir_all(t.join("acls")).unwrap();
            t
        }
        fn lun(&self, tpg: &Path, n: u64, bs: &str) -> PathBuf {
            let l = tpg.join(format!("lun/lun_{n}"));
            fs::create_dir_all(&l).unwrap();
            symlink(self.bs(bs), l.join(bs)).unwrap();
            l
        }
        fn acl(&self, tpg: &Path, ini: &str, mapped: u64, lun: &Path) {
            let m = tpg.join("acls").join(ini).join(format!("lun_{mapped}"));
            fs::create_dir_all(&m).unwrap();
            symlink(lun, m.join("link")).unwrap();
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const T: &str = "iqn.2003-01.org.linux-iscsi.vm:tgt";
    const I1: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
    const I2: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2";

    #[test]
    fn one_acl_per_view_gives_one_nexus_each() {
        let t = Tree::new("views");
        let tpg = t.tpg("iscsi", T);
        let l0 = t.lun(&tpg, 0, "v1");
        let l1 = t.lun(&tpg, 1, "v2");
        t.acl(&tpg, I1, 0, &l0);
        t.acl(&tpg, I2, 0, &l1);
        let target = TargetPort {
            fabric: "iscsi".into(),
            wwn: T.into(),
            tpgt: 1,
        };
        assert_eq!(
            discover(&t.0, &t.bs("v1")),
            ViewNexus::One(Nexus {
                initiator: I1.into(),
                target: target.clone(),
                tpg_lun: 0,
                mapped_lun: 0
            })
        );
        assert_eq!(
            discover(&t.0, &t.bs("v2")),
            ViewNexus::One(Nexus {
                initiator: I2.into(),
                target,
                tpg_lun: 1,
                mapped_lun: 0
            })
        );
    }

    #[test]
    fn unexported_view() {
        let t = Tree::new("none");
        assert_eq!(discover(&t.0, &t.bs("v1")), ViewNexus::NotExported);
    }

    #[test]
    fn ambiguous_layouts_say_how_to_fix_them() {
        let t = Tree::new("amb");
        let tpg = t.tpg("iscsi", T);
        let l0 = t.lun(&tpg, 0, "v1");
        let ViewNexus::Ambiguous(why) = discover(&t.0, &t.bs("v1")) else {
            panic!("no ACL must be ambiguous")
        };
        assert!(why.contains("no ACL"), "{why}");

        t.acl(&tpg, I1, 0, &l0);
        t.acl(&tpg, I2, 3, &l0);
        let ViewNexus::Ambiguous(why) = discover(&t.0, &t.bs("v1")) else {
            panic!("two ACLs must be ambiguous")
        };
        assert!(
            why.contains(I1) && why.contains(I2) && why.contains("its own view"),
            "{why}"
        );

        fs::write(tpg.join("attrib/generate_node_acls"), "1\n").unwrap();
        let ViewNexus::Ambiguous(why) = discover(&t.0, &t.bs("v1")) else {
            panic!("demo mode must be ambiguous")
        };
        assert!(why.contains("demo mode"), "{why}");
    }

    #[test]
    fn two_target_ports_are_ambiguous() {
        let t = Tree::new("ports");
        let a = t.tpg("iscsi", T);
        let b = t.tpg("iscsi", "iqn.2003-01.org.linux-iscsi.vm:other");
        let la = t.lun(&a, 0, "v1");
        let lb = t.lun(&b, 0, "v1");
        t.acl(&a, I1, 0, &la);
        t.acl(&b, I1, 0, &lb);
        let ViewNexus::Ambiguous(why) = discover(&t.0, &t.bs("v1")) else {
            panic!("must be ambiguous")
        };
        assert!(why.contains("2 target ports"), "{why}");
    }

    #[test]
    fn tcm_loop_uses_the_tpg_nexus() {
        let t = Tree::new("loop");
        let tpg = t.tpg("loopback", "naa.5001405000000001");
        t.lun(&tpg, 2, "v1");
        let ViewNexus::Ambiguous(why) = discover(&t.0, &t.bs("v1")) else {
            panic!("no nexus yet")
        };
        assert!(why.contains("no nexus"), "{why}");
        fs::write(tpg.join("nexus"), "naa.5001405000000002\n").unwrap();
        assert_eq!(
            discover(&t.0, &t.bs("v1")),
            ViewNexus::One(Nexus {
                initiator: "naa.5001405000000002".into(),
                target: TargetPort {
                    fabric: "loopback".into(),
                    wwn: "naa.5001405000000001".into(),
                    tpgt: 1
                },
                tpg_lun: 2,
                mapped_lun: 2,
            })
        );
    }
}
