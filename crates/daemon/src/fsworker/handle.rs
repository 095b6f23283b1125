//! The main loop's handle on the worker thread: starts it, queues commands (a `Thaw` also
//! cancels a running freeze of its transaction), and hands back outcomes behind an eventfd
//! the main loop polls. Dropping it ends the thread, which thaws what it still holds.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use hv_vss_freezer::FlushAhead;
use rustix::event::EventfdFlags;

use super::command_loop::run;
use super::{FsCommand, FsOutcome, FsSetup};

/// Handle to the worker thread.
#[derive(Debug)]
pub struct FsWorker {
    commands: Option<Sender<FsCommand>>,
    outcomes: Receiver<FsOutcome>,
    wake: Arc<OwnedFd>,
    /// Highest transaction a `Thaw` was sent for: a freeze of that or an earlier
    /// transaction is cancelled.
    thaw_sent_through: Arc<AtomicU64>,
    /// The worker's flusher, for tests to observe.
    #[cfg(test)]
    flusher: Arc<FlushAhead>,
    thread: Option<JoinHandle<()>>,
}

impl FsWorker {
    /// Starts the worker thread.
    pub fn start(setup: FsSetup) -> std::io::Result<Self> {
        let wake = Arc::new(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?);
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (out_tx, out_rx) = mpsc::channel();
        let thread_wake = Arc::clone(&wake);
        let thaw_sent_through = Arc::new(AtomicU64::new(0));
        let cancel = Arc::clone(&thaw_sent_through);
        let worker_flusher = Arc::new(FlushAhead::new());
        #[cfg(test)]
        let flusher = Arc::clone(&worker_flusher);
        let thread = std::thread::Builder::new()
            .name("hv-vss-fs".into())
            .spawn(move || {
                run(
                    setup,
                    &cmd_rx,
                    &out_tx,
                    &thread_wake,
                    &cancel,
                    &worker_flusher,
                );
            })?;
        Ok(Self {
            commands: Some(cmd_tx),
            outcomes: out_rx,
            wake,
            thaw_sent_through,
            #[cfg(test)]
            flusher,
            thread: Some(thread),
        })
    }

    /// Queues a command. A `Thaw` also cancels a running freeze of its transaction.
    pub fn send(&self, command: FsCommand) {
        if let FsCommand::Thaw { txn } = command {
            self.thaw_sent_through.fetch_max(txn.0, Ordering::SeqCst);
        }
        if let Some(tx) = &self.commands {
            // The worker only exits when the sender is dropped.
            let _ = tx.send(command);
        }
    }

    /// The flush-ahead of this worker (its counters).
    #[cfg(test)]
    pub fn flusher(&self) -> &FlushAhead {
        &self.flusher
    }

    /// The fd that becomes readable when outcomes are waiting.
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Takes every outcome waiting (and resets the wake fd).
    pub fn drain(&self) -> Vec<FsOutcome> {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.wake, &mut buf);
        self.outcomes.try_iter().collect()
    }
}

impl Drop for FsWorker {
    fn drop(&mut self) {
        // Dropping the sender ends the worker's loop; it thaws anything it still holds
        // (FrozenSet's Drop) before exiting.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
