//! Per-job cancel flags, shared by the hub's job queues (evaluation,
//! training): the API sets a job's flag, the worker running it polls it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The flags of the jobs that are queued or running.
#[derive(Debug, Clone, Default)]
pub(crate) struct CancelFlags(Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>);

impl CancelFlags {
    /// Job `id`'s flag, made when first asked for.
    pub(crate) fn flag(&self, id: u64) -> Arc<AtomicBool> {
        let mut flags = self.0.lock().unwrap_or_else(|e| e.into_inner());
        flags.entry(id).or_default().clone()
    }

    /// Asks job `id` to stop; false if it is not queued or running.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        let flags = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match flags.get(&id) {
            Some(flag) => {
                flag.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Job `id` has ended: a later cancel finds nothing.
    pub(crate) fn forget(&self, id: u64) {
        let mut flags = self.0.lock().unwrap_or_else(|e| e.into_inner());
        flags.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_a_live_job_and_not_an_ended_one() {
        let flags = CancelFlags::default();
        let flag = flags.flag(3);
        assert!(!flags.cancel(4), "no job 4");
        assert!(flags.cancel(3));
        assert!(flag.load(Ordering::SeqCst));
        flags.forget(3);
        assert!(!flags.cancel(3));
    }
}
