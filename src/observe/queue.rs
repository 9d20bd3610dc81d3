//! A bounded hand-off from the request path to a background writer: offering never
//! waits (a full queue drops the item and counts it), and a flush marker lets shutdown
//! wait until what was queued before it has been handled.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
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

/// Items taken together, and the flushes waiting for them.
pub struct Batch<T> {
    pub items: Vec<T>,
    flushes: Vec<SyncSender<()>>,
}

impl<T> Drop for Batch<T> {
    /// The batch is handled (or given up on): its flushes are answered.
    fn drop(&mut self) {
        for done in self.flushes.drain(..) {
            let _ = done.try_send(());
        }
    }
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
    /// Waits for an item, then takes up to `max`, waiting at most `linger` for more (a
    /// flush ends the wait). `None` once every sender is gone and nothing is left.
    pub fn next(&self, max: usize, linger: Duration) -> Option<Batch<T>> {
        let mut batch = Batch {
            items: Vec::new(),
            flushes: Vec::new(),
        };
        let first = self.rx.recv().ok()?;
        let deadline = Instant::now() + linger;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Item(item) => batch.items.push(item),
                Msg::Flush(done) => {
                    batch.flushes.push(done);
                    break;
                }
            }
            if batch.items.len() >= max {
                break;
            }
            next = match self.rx.try_recv() {
                Ok(m) => Some(m),
                Err(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.rx.recv_timeout(left).ok()
                }
            };
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_and_a_flush_waits_for_earlier_items() {
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let (q, batches) = bounded::<u32>(2, dropped.clone());
        q.offer(1);
        q.offer(2);
        q.offer(3);
        assert_eq!(dropped.get(), 1);
        let b = batches.next(10, Duration::ZERO).unwrap();
        assert_eq!(b.items, vec![1, 2]);
        drop(b);
        let writer = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Some(b) = batches.next(10, Duration::from_millis(1)) {
                seen.extend(b.items.iter().copied());
            }
            seen
        });
        q.offer(4);
        q.flush(Duration::from_secs(5));
        drop(q);
        assert_eq!(writer.join().unwrap(), vec![4]);
    }
}
