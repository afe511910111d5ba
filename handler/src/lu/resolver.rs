//! The nexus resolver: one thread that reads configfs for every view, on
//! start, when kicked, and every few seconds (ACLs change without notice).
//!
//! Views never read configfs on the command path: tcm_loop links a LUN
//! (a configfs symlink) and scans it synchronously, holding configfs locks
//! while the scan's INQUIRY waits for us; a command that read configfs would
//! wait for the scan that waits for it, until the kernel's command timeout.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::View;

/// How often views are re-resolved without a kick.
pub const PERIOD: Duration = Duration::from_secs(5);

/// Handle to the resolver thread.
#[derive(Debug, Clone)]
pub struct Resolver {
    views: Arc<Mutex<Vec<Weak<View>>>>,
    kick: Sender<()>,
}

impl Resolver {
    /// Starts the thread. It ends when every handle is dropped.
    pub fn spawn() -> std::io::Result<Resolver> {
        let views: Arc<Mutex<Vec<Weak<View>>>> = Arc::default();
        let (kick, rx) = mpsc::channel::<()>();
        let shared = views.clone();
        std::thread::Builder::new()
            .name("tcmu-prd-nexus".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(PERIOD) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    while rx.try_recv().is_ok() {}
                    let live: Vec<Arc<View>> = {
                        let mut v = shared
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        v.retain(|w| w.strong_count() > 0);
                        v.iter().filter_map(Weak::upgrade).collect()
                    };
                    for view in live {
                        view.refresh_nexus();
                    }
                }
            })?;
        Ok(Resolver { views, kick })
    }

    /// Adds a view and asks for a resolution soon.
    pub fn add(&self, view: &Arc<View>) {
        view.set_resolver(self.clone());
        self.views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(view));
        self.kick();
    }

    /// Asks for a resolution of every view now.
    pub fn kick(&self) {
        let _ = self.kick.send(());
    }
}
