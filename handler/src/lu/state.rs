//! What an LU keeps in its durable state store (DESIGN.md §4): the identity
//! every view reports, the cluster-unique relative target port identifiers,
//! and the persistent reservation state. Serialized as versioned JSON: small
//! (a few KiB for 100 registrants), and readable with `jq` when debugging.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::ua::UaLog;
use crate::pr::{Nexus, PrState};
use crate::scsi::{ConfigError, LuIdentity, NaaId};

/// The state format this build writes and reads.
pub const FORMAT: u32 = 1;

/// The identity of an LU, created once and shared by every view on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// NAA IEEE Registered Extended designator (NAA 6, 16 bytes).
    pub naa: Vec<u8>,
    /// Unit serial number (VPD 0x80): the NAA's vendor-specific part in hex.
    pub serial: String,
}

/// LIO's IEEE company id, which LIO itself uses in its NAA designators.
const OUI: u32 = 0x00_1405;

impl Identity {
    /// What INQUIRY and the VPD pages report for this identity: LIO's vendor
    /// string, our product and revision, the NAA designator, and the unit
    /// serial (`serial` overrides the identity's own, from the cfgstring).
    ///
    /// # Errors
    ///
    /// A NAA designator of the wrong length for its type (a damaged state).
    pub fn lu_identity(&self, serial: Option<&str>) -> Result<LuIdentity, ConfigError> {
        Ok(LuIdentity {
            naa: NaaId::new(&self.naa)?,
            serial: serial.unwrap_or(&self.serial).to_owned(),
            vendor: "LIO-ORG".into(),
            product: "tcmu-prd".into(),
            revision: "0001".into(),
        })
    }

    /// A new, random identity: NAA 6 with LIO's company id and 100 random
    /// bits. `random` supplies 13 bytes.
    #[must_use]
    pub fn from_random(random: &[u8; 13]) -> Identity {
        let mut naa = vec![0u8; 16];
        // NAA=6 | OUI (24 bits) | vendor specific (36 + 64 bits).
        naa[0] = 0x60 | u8::try_from((OUI >> 20) & 0xf).unwrap_or(0);
        naa[1] = u8::try_from((OUI >> 12) & 0xff).unwrap_or(0);
        naa[2] = u8::try_from((OUI >> 4) & 0xff).unwrap_or(0);
        naa[3] = (u8::try_from(OUI & 0xf).unwrap_or(0) << 4) | (random[0] & 0x0f);
        naa[4..16].copy_from_slice(&random[1..13]);
        let serial = naa[3..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[1..]
            .to_owned();
        Identity { naa, serial }
    }

    /// A new identity from the kernel's random source.
    pub fn generate() -> std::io::Result<Identity> {
        use std::io::Read;
        let mut r = [0u8; 13];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut r)?;
        Ok(Identity::from_random(&r))
    }
}

/// The durable state of one LU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuState {
    /// [`FORMAT`].
    pub format: u32,
    pub identity: Identity,
    /// Target port (`fabric/wwn/tpgt_N`, on any node) -> its relative target
    /// port identifier, unique across the cluster (DESIGN.md §2).
    pub ports: BTreeMap<String, u16>,
    pub pr: PrState,
    /// Unit attentions for nexuses served by any node (cluster mode only;
    /// absent in states written before it existed).
    #[serde(default)]
    pub uas: UaLog<Nexus>,
}

/// Why stored state bytes are unusable.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not valid JSON for [`LuState`].
    #[error("state does not parse: {0}")]
    Parse(#[from] serde_json::Error),
    /// Written by a newer tcmu-prd.
    #[error("state format {0} is newer than this build's {FORMAT}")]
    Newer(u32),
    /// Every RTPI is taken.
    #[error("no relative target port identifier left")]
    PortsExhausted,
}

impl LuState {
    /// A fresh state with `identity` and no ports or reservations.
    #[must_use]
    pub fn new(identity: Identity) -> LuState {
        LuState {
            format: FORMAT,
            identity,
            ports: BTreeMap::new(),
            pr: PrState::default(),
            uas: UaLog::default(),
        }
    }

    /// Encodes for the store.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes store bytes; a newer format is refused, never guessed at.
    pub fn decode(bytes: &[u8]) -> Result<LuState, StateError> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        if probe.format > FORMAT {
            return Err(StateError::Newer(probe.format));
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The RTPI of target port `name`, if it has one.
    #[must_use]
    pub fn rtpi(&self, name: &str) -> Option<u16> {
        self.ports.get(name).copied()
    }

    /// Gives `name` the lowest unused RTPI (1..=65535) and returns it.
    pub fn assign_rtpi(&mut self, name: &str) -> Result<u16, StateError> {
        if let Some(r) = self.rtpi(name) {
            return Ok(r);
        }
        let used: std::collections::BTreeSet<u16> = self.ports.values().copied().collect();
        let r = (1..=u16::MAX)
            .find(|r| !used.contains(r))
            .ok_or(StateError::PortsExhausted)?;
        self.ports.insert(name.to_owned(), r);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lu_identity_reports_the_naa_and_the_serial_or_its_override() {
        let id = Identity::from_random(&[0x5a; 13]);
        let own = id.lu_identity(None).unwrap();
        assert_eq!(own.naa.as_bytes(), &id.naa[..]);
        assert_eq!(own.serial, id.serial);
        assert_eq!(
            (
                own.vendor.as_str(),
                own.product.as_str(),
                own.revision.as_str()
            ),
            ("LIO-ORG", "tcmu-prd", "0001")
        );
        assert_eq!(id.lu_identity(Some("tc1")).unwrap().serial, "tc1");
        let damaged = Identity {
            naa: id.naa[..15].to_vec(),
            serial: id.serial.clone(),
        };
        assert_eq!(damaged.lu_identity(None).unwrap_err(), ConfigError::BadNaa);
    }

    #[test]
    fn identity_is_naa6_with_lio_oui() {
        let id = Identity::from_random(&[0xab; 13]);
        assert_eq!(id.naa.len(), 16);
        assert_eq!(id.naa[0] >> 4, 6);
        let oui = (u32::from(id.naa[0] & 0xf) << 20)
            | (u32::from(id.naa[1]) << 12)
            | (u32::from(id.naa[2]) << 4)
            | u32::from(id.naa[3] >> 4);
        assert_eq!(oui, OUI);
        assert_eq!(id.serial.len(), 25);
        assert!(id.serial.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(Identity::generate().unwrap(), Identity::generate().unwrap());
    }

    #[test]
    fn round_trips_and_refuses_newer_formats() {
        let mut s = LuState::new(Identity::from_random(&[1; 13]));
        assert_eq!(s.assign_rtpi("iscsi/iqn.x/tpgt_1").unwrap(), 1);
        assert_eq!(s.assign_rtpi("iscsi/iqn.y/tpgt_1").unwrap(), 2);
        assert_eq!(s.assign_rtpi("iscsi/iqn.x/tpgt_1").unwrap(), 1);
        s.pr.generation = 7;
        let back = LuState::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
        let newer = String::from_utf8(s.encode())
            .unwrap()
            .replace("\"format\":1", "\"format\":2");
        assert!(matches!(
            LuState::decode(newer.as_bytes()),
            Err(StateError::Newer(2))
        ));
        assert!(matches!(
            LuState::decode(b"{not json"),
            Err(StateError::Parse(_))
        ));
    }

    #[test]
    fn rtpis_fill_gaps() {
        let mut s = LuState::new(Identity::from_random(&[2; 13]));
        s.ports.insert("a".into(), 1);
        s.ports.insert("c".into(), 3);
        assert_eq!(s.assign_rtpi("b").unwrap(), 2);
        assert_eq!(s.assign_rtpi("d").unwrap(), 4);
    }
}
