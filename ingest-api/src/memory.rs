//! Giving memory back after a burst of connections.
//!
//! glibc's malloc serves each thread from an arena of its own and keeps the
//! pages a flood of connections made it grow, long after the connections
//! are gone (measured: 12 MiB idle, over 100 MiB at 4,000 connections, and
//! still about 100 MiB once they had closed). [`release_after_bursts`]
//! watches the open connections and, once a burst has receded, asks malloc
//! to return its free pages to the system (`malloc_trim`, which also walks
//! the per-thread arenas). Elsewhere than glibc it does nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often the connections are looked at.
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// A burst smaller than this many connections is not worth a trim.
const BURST: usize = 256;

/// The open connections, and the most open since the last look.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    busiest: AtomicUsize,
}

impl Connections {
    /// Counts a connection opened.
    pub fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.busiest.fetch_max(open, Ordering::Relaxed);
    }

    /// Counts a connection closed.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a burst has receded since the last call: at least [`BURST`]
    /// connections were open at once, and no more than a quarter of them
    /// are now. Starts the next watch from the connections open now.
    fn burst_receded(&self) -> bool {
        let open = self.open.load(Ordering::Relaxed);
        let busiest = self.busiest.swap(open, Ordering::Relaxed);
        if busiest >= BURST && open <= busiest / 4 {
            return true;
        }
        // Still in the burst: keep its peak.
        self.busiest.fetch_max(busiest, Ordering::Relaxed);
        false
    }
}

/// Runs until aborted: returns malloc's free pages to the system each time
/// a burst of connections has receded.
pub async fn release_after_bursts(connections: Arc<Connections>) {
    let mut every = tokio::time::interval(LOOK_EVERY);
    loop {
        every.tick().await;
        if connections.burst_receded() {
            let _ = tokio::task::spawn_blocking(trim).await;
            metrics::counter!("memory_trims_total").increment(1);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and is thread safe; it only
    // releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(connections: &Connections, count: usize) {
        for _ in 0..count {
            connections.opened();
        }
    }

    fn close(connections: &Connections, count: usize) {
        for _ in 0..count {
            connections.closed();
        }
    }

    #[test]
    fn a_burst_has_receded_once_three_quarters_of_it_closed() {
        let connections = Connections::default();
        open(&connections, 1000);
        assert!(!connections.burst_receded(), "still open");
        close(&connections, 700);
        assert!(!connections.burst_receded(), "300 of 1000 still open");
        close(&connections, 60);
        assert!(connections.burst_receded(), "240 of 1000");
        assert!(!connections.burst_receded(), "once per burst");
    }

    #[test]
    fn a_small_burst_is_no_reason_to_trim() {
        let connections = Connections::default();
        open(&connections, BURST - 1);
        close(&connections, BURST - 1);
        assert!(!connections.burst_receded());
    }
}
