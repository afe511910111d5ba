//! Logical units and their views: the layer between the ring and the pure
//! engines (SCSI emulation, PR). Every view of an LU shares one `scsi::Lu`
//! and one PR state; each view adds its own I_T nexus and target port.

pub mod gate;
pub mod resolver;
pub mod state;
pub mod sync;
pub mod view;

pub use resolver::Resolver;
pub use sync::Sharing;
pub use view::{Lu, Lus, NexusInfo, OpenError, RwIo, View};
