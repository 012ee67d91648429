//! Turns on a device shared by several models. Each model has its own queue and inference
//! thread, and each thread takes a turn on its device for every batch it runs. Turns are given
//! in the order they were asked for (a ticket lock), so under a flood of work for one model a
//! batch of another waits for at most the batch running and those already waiting, one per
//! other model: never for a queue's worth.
//!
//! A lock of the standard library gives no such order (a thread that releases it can take it
//! again at once, before the one that waited), hence this small one.

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

/// The turns of one device.
#[derive(Default)]
pub struct DeviceTurn {
    tickets: Mutex<Tickets>,
    changed: Condvar,
}

#[derive(Default)]
struct Tickets {
    /// The next ticket to hand out.
    next: u64,
    /// The ticket whose turn it is.
    serving: u64,
}

/// A turn on the device, held until dropped.
pub struct Turn<'a>(&'a DeviceTurn);

impl DeviceTurn {
    fn lock(&self) -> MutexGuard<'_, Tickets> {
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for this caller's turn (blocking: only inference threads call it).
    pub fn take(&self) -> Turn<'_> {
        let mut tickets = self.lock();
        let mine = tickets.next;
        tickets.next += 1;
        while tickets.serving != mine {
            tickets = self
                .changed
                .wait(tickets)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Turn(self)
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.lock().serving += 1;
        self.0.changed.notify_all();
    }
}

/// The turns of every device in use, by device name ("cpu", "cuda:0"): models on one device
/// share its turns; models on different devices run at the same time.
#[derive(Default)]
pub struct Devices(Mutex<BTreeMap<String, Arc<DeviceTurn>>>);

impl Devices {
    pub fn turn(&self, device: &str) -> Arc<DeviceTurn> {
        let mut devices = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(devices.entry(device.to_string()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        thread,
        time::Duration,
    };

    use super::DeviceTurn;

    /// Two threads that each want the device again as soon as they let it go alternate: the one
    /// that just had a turn cannot take the next before the other, which was waiting.
    #[test]
    fn turns_alternate_between_threads_that_both_want_the_device() {
        let device = Arc::new(DeviceTurn::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = device.take();
        let threads: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let (device, order) = (Arc::clone(&device), Arc::clone(&order));
                let handle = thread::spawn(move || {
                    for _ in 0..5 {
                        let _turn = device.take();
                        order.lock().unwrap().push(name);
                        thread::sleep(Duration::from_millis(2));
                    }
                });
                // Both wait before the first turn ends, "a" first.
                thread::sleep(Duration::from_millis(50));
                handle
            })
            .collect();
        drop(first);
        for t in threads {
            t.join().unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(order.len(), 10);
        for pair in order.windows(2) {
            assert_ne!(pair[0], pair[1], "turns did not alternate: {order:?}");
        }
    }
}
