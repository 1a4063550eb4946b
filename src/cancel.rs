//! Whether the pass running on this thread has been asked to stop (the worker
//! stopping, the host interrupting `attachment_sync()`), for code deep inside SQLite
//! callbacks (a watch query's progress handler) that cannot be handed the pass's
//! stop condition directly. The condition is set for the extent of a [`Scope`].

use std::cell::Cell;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// A stop condition looked at no more often than this: the host's check runs a statement.
const CHECK_EVERY: Duration = Duration::from_millis(20);

type Check = *const (dyn Fn() -> bool + 'static);

thread_local! {
    static CONDITION: Cell<Option<Check>> = const { Cell::new(None) };
    static LAST: Cell<Option<(Instant, bool)>> = const { Cell::new(None) };
}

/// Makes `should_stop` this thread's stop condition until dropped. The lifetime ties the
/// Scope to the borrow, so the compiler keeps it from outliving the condition.
pub struct Scope<'a> {
    previous: Option<Check>,
    _condition: PhantomData<&'a ()>,
}

impl<'a> Scope<'a> {
    pub fn enter(should_stop: &'a dyn Fn() -> bool) -> Scope<'a> {
        // Safety: the lifetime is erased only for as long as the Scope lives, and a Scope
        // never outlives the borrow it was made from (it is dropped in the same frame).
        let check: Check = unsafe { std::mem::transmute::<*const (dyn Fn() -> bool + '_), Check>(should_stop) };
        LAST.with(|l| l.set(None));
        Scope { previous: CONDITION.with(|c| c.replace(Some(check))), _condition: PhantomData }
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        CONDITION.with(|c| c.set(self.previous));
        LAST.with(|l| l.set(None));
    }
}

/// True once this thread's stop condition holds (checked at most every 20 ms; once
/// true it stays true for the scope).
pub fn requested() -> bool {
    let Some(check) = CONDITION.with(|c| c.get()) else { return false };
    let now = Instant::now();
    if let Some((at, answer)) = LAST.with(|l| l.get()) {
        if answer || now.duration_since(at) < CHECK_EVERY {
            return answer;
        }
    }
    // Safety: set by a live Scope on this thread (see Scope::enter).
    let answer = unsafe { (*check)() };
    LAST.with(|l| l.set(Some((now, answer))));
    answer
}
