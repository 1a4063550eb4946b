//! A transfer that is cancelled (a timed-out `attachment_fetch`, the worker stopping)
//! stops even while it waits for the server: ureq blocks in a read until the response
//! or stall timeout (up to a minute), and the progress callback that observes the
//! cancel flag only runs when bytes arrive. Every connection's reads are therefore cut
//! into slices of at most [`SLICE`], and between slices the transfer's stop flag (set
//! for the thread running it, see [`Scope`]) is looked at. The overall timeouts are kept:
//! the last slice ends when the caller's budget does, with the caller's reason.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ureq::unversioned::transport::time::Duration as UreqDuration;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};
use ureq::Error;

/// How long a read waits before the stop flag is looked at again.
const SLICE: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    static STOP: Cell<Option<*const AtomicBool>> = const { Cell::new(None) };
}

/// Makes `stop` the stop flag of this thread's transfers until dropped. The lifetime ties
/// the Scope to the borrow, so the compiler keeps it from outliving the flag.
pub struct Scope<'a> {
    previous: Option<*const AtomicBool>,
    _flag: PhantomData<&'a AtomicBool>,
}

impl<'a> Scope<'a> {
    pub fn enter(stop: &'a AtomicBool) -> Scope<'a> {
        Scope { previous: STOP.with(|s| s.replace(Some(stop as *const AtomicBool))), _flag: PhantomData }
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        STOP.with(|s| s.set(self.previous));
    }
}

fn stopped() -> Option<bool> {
    // Safety: set by a live Scope on this thread, which never outlives the borrow it was
    // made from (it is dropped in the frame that holds the flag).
    STOP.with(|s| s.get()).map(|p| unsafe { (*p).load(Ordering::Relaxed) })
}

/// Wraps every transport the default chain makes (TLS included) in a [`Stoppable`].
#[derive(Debug, Default)]
pub struct StoppableConnector;

impl Connector<Box<dyn Transport>> for StoppableConnector {
    type Out = Stoppable;

    fn connect(&self, _details: &ConnectionDetails, chained: Option<Box<dyn Transport>>) -> Result<Option<Stoppable>, Error> {
        Ok(chained.map(Stoppable))
    }
}

pub struct Stoppable(Box<dyn Transport>);

impl fmt::Debug for Stoppable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Stoppable").field(&self.0).finish()
    }
}

impl Transport for Stoppable {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.0.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.0.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        if stopped().is_none() {
            return self.0.await_input(timeout);
        }
        // The budget of this read: what is left of the stage, capped by the per-read stall.
        let budget = timeout.for_read();
        let start = Instant::now();
        loop {
            if stopped() == Some(true) {
                return Err(Error::Io(std::io::Error::other("cancelled: the transfer was stopped")));
            }
            let left = match budget.after {
                UreqDuration::Exact(d) => Some(d.saturating_sub(start.elapsed())),
                UreqDuration::NotHappening => None,
            };
            let last = left.is_some_and(|l| l <= SLICE);
            let slice = NextTimeout {
                after: UreqDuration::Exact(left.map_or(SLICE, |l| l.min(SLICE))),
                reason: budget.reason,
                per_read: None,
                per_write: timeout.per_write,
            };
            match self.0.await_input(slice) {
                Err(Error::Timeout(_)) if !last => continue,
                other => return other,
            }
        }
    }

    fn is_open(&mut self) -> bool {
        self.0.is_open()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}
