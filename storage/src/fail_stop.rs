//! The one fail-stop policy of both services: any storage error stops the process.
//!
//! A service changes its memory (locks released, a txn's phase moved on) together with the
//! write that records the change. If that write fails, memory and log disagree, and going on
//! could release locks over data never written or acknowledge what the log does not hold. So
//! the first storage error, of any kind, trips this switch; the binary watches it, exits, and
//! the restart recovers from the log, which is always the truth. A checksum failure is fatal
//! for the same reason: reading garbage as "absent" would let presumed abort turn a commit
//! into an abort.

use tokio::sync::watch;
use txn_types::store::StoreError;

/// Set once by the first storage error; watched by the binary.
#[derive(Debug)]
pub struct FailStop {
    fatal: watch::Sender<Option<String>>,
}

impl Default for FailStop {
    fn default() -> Self {
        Self::new()
    }
}

impl FailStop {
    pub fn new() -> Self {
        Self {
            fatal: watch::channel(None).0,
        }
    }

    /// Passes `r` through; an error also stops the service (the first one is kept as why).
    pub fn check<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        r.inspect_err(|e| self.trip(e.to_string()))
    }

    /// Stops the service for `why`, unless it is already stopping.
    pub fn trip(&self, why: String) {
        self.fatal.send_if_modified(|f| {
            if f.is_none() {
                tracing::error!(error = %why, "storage failed; stopping (the restart recovers from the log)");
                *f = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Why the service must stop, once it must.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    pub fn tripped(&self) -> bool {
        self.fatal.borrow().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_stops_the_service_and_is_kept() {
        let stop = FailStop::new();
        let rx = stop.subscribe();
        assert_eq!(stop.check(Ok::<_, StoreError>(7)).unwrap(), 7);
        assert!(!stop.tripped());
        let _ = stop.check::<()>(Err(StoreError::Engine("disk gone".into())));
        let _ = stop.check::<()>(Err(StoreError::Engine("second".into())));
        assert!(stop.tripped());
        assert_eq!(rx.borrow().as_deref(), Some("disk gone"));
    }
}
