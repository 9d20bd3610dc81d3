//! A bounded hand-off from the request path to a background writer: offering never
//! waits (a full queue drops the item and counts it), and a flush marker lets shutdown
//! wait until what was queued before it has been handled.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

enum Msg<T> {
    Item(T),
    /// Answered once every item queued before it is handled.
    Flush(SyncSender<()>),
}

/// The sending end (the request path).
pub struct Queue<T> {
    tx: SyncSender<Msg<T>>,
    dropped: prometheus::IntCounter,
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

/// The receiving end (the writer thread).
pub struct Batches<T> {
    rx: Receiver<Msg<T>>,
}

/// A queue of at most `capacity` items; `dropped` counts what a full queue refused.
pub fn bounded<T>(capacity: usize, dropped: prometheus::IntCounter) -> (Queue<T>, Batches<T>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    (Queue { tx, dropped }, Batches { rx })
}

impl<T> Queue<T> {
    /// Queues an item; never waits.
    pub fn offer(&self, item: T) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Item(item))
        {
            self.dropped.inc();
        }
    }

    /// Waits, at most `timeout`, until everything queued so far is handled.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let mut msg = Msg::Flush(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

impl<T> Batches<T> {
    /// The writer's loop, until every sender is gone and nothing is left: the queued items
    /// in batches of at most `max`, each handed to `handle` (which takes them out of the
    /// vector; its allocation is reused). The writer never parks on the queue, so offering
    /// an item never has to wake a thread; it sleeps `ticks.0` after a batch (small, steady
    /// writes under load), twice as long after each empty look, up to `ticks.1` (idle).
    pub fn run(
        &self,
        ticks: (Duration, Duration),
        max: usize,
        mut handle: impl FnMut(&mut Vec<T>),
    ) {
        let mut items = Vec::with_capacity(max);
        let mut tick = ticks.0;
        loop {
            let Some(flushes) = self.take(max, &mut items) else {
                return;
            };
            let full = items.len() >= max;
            if items.is_empty() {
                tick = (tick * 2).min(ticks.1);
            } else {
                handle(&mut items);
                items.clear();
                tick = ticks.0;
            }
            // The batch is handled: the flushes waiting for it are answered.
            for done in flushes {
                let _ = done.try_send(());
            }
            if !full {
                std::thread::sleep(tick);
            }
        }
    }

    /// What is queued, up to `max` items, into `items` without waiting, and the flushes
    /// met on the way; `None` once every sender is gone and nothing is left.
    fn take(&self, max: usize, items: &mut Vec<T>) -> Option<Vec<SyncSender<()>>> {
        let mut flushes = Vec::new();
        while items.len() < max {
            match self.rx.try_recv() {
                Ok(Msg::Item(item)) => items.push(item),
                Ok(Msg::Flush(done)) => flushes.push(done),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if items.is_empty() && flushes.is_empty() {
                        return None;
                    }
                    break;
                }
            }
        }
        Some(flushes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_full_queue_drops_and_counts_and_a_flush_waits_for_earlier_items() {
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let (q, batches) = bounded::<u32>(2, dropped.clone());
        q.offer(1);
        q.offer(2);
        q.offer(3);
        assert_eq!(dropped.get(), 1);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let writer = std::thread::spawn(move || {
            batches.run(
                (Duration::from_millis(5), Duration::from_millis(20)),
                10,
                |items| {
                    // A slow writer: the flush below must wait for it.
                    std::thread::sleep(Duration::from_millis(50));
                    s.lock().unwrap().extend(items.drain(..));
                },
            )
        });
        while seen.lock().unwrap().len() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        q.offer(4);
        q.flush(Duration::from_secs(5));
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 4]);
        assert_eq!(dropped.get(), 1);
        drop(q);
        writer.join().unwrap();
    }
}
