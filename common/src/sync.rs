//! The one policy for poisoned locks.
//!
//! A std lock is poisoned when a thread panicked while holding it. burrow keeps every piece of
//! shared state consistent at each step: a map gains or loses a whole entry, a value is
//! replaced whole, and nothing is left half-written across a call that can panic. So a
//! poisoned lock still guards usable state, and the right answer is to take it back and carry
//! on: refusing a visitor, dropping a session or returning an error because some other task
//! panicked would turn one bug into an outage.
//!
//! Hence every `Mutex` and `RwLock` is locked through [`lock`], [`read`] and [`write`], never
//! with `.lock().unwrap()`, `.lock().ok()` or an error for the poisoned case. Code that cannot
//! keep its state consistent at each step must not sit behind a std lock.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, taking it back if a panicking holder poisoned it.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `lock`, taking it back if a panicking writer poisoned it.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `lock`, taking it back if a panicking holder poisoned it.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_back_with_its_state() {
        let shared = Arc::new(Mutex::new(vec![1]));
        let holder = shared.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = holder.lock();
            panic!("a holder panics");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        lock(&shared).push(2);
        assert_eq!(*lock(&shared), [1, 2]);

        let table = Arc::new(RwLock::new(0));
        let writer = table.clone();
        let panicked = std::thread::spawn(move || {
            let _guard = writer.write();
            panic!("a writer panics");
        })
        .join();
        assert!(panicked.is_err());
        *write(&table) += 1;
        assert_eq!(*read(&table), 1);
    }
}
