//! The durability stage of a pass (group commit). Downloaded files are made durable
//! and moved to their names on a thread of their own while the next files download,
//! instead of on the pass's thread, which would stop claiming and recording meanwhile.
//! Whatever finishes during one flush goes into the next, so batches grow with the
//! rate and the flushes per file fall as it rises.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::remote::RemoteError;
use crate::sync::{Job, Outcome, Syncer};

pub(crate) type Results = Vec<(Job, Outcome)>;

pub(crate) struct Publisher {
    to_flush: Option<Sender<Results>>,
    flushed: Receiver<Results>,
    thread: Option<JoinHandle<()>>,
    /// Results handed over and not yet taken back.
    pending: usize,
}

impl Publisher {
    pub fn start(syncer: &Arc<Syncer>) -> Result<Publisher> {
        let (to_flush, incoming) = crossbeam_channel::unbounded::<Results>();
        let (done, flushed) = crossbeam_channel::unbounded::<Results>();
        let syncer = syncer.clone();
        let thread = std::thread::Builder::new()
            .name("attachments-flush".into())
            .spawn(move || {
                while let Ok(mut batch) = incoming.recv() {
                    // Everything handed over during the last flush shares this one.
                    batch.extend(incoming.try_iter().flatten());
                    let jobs: Vec<Job> = batch.iter().map(|(job, _)| job.clone()).collect();
                    // A panic must not lose the results: the pass waits for every one of them.
                    let flushed = std::panic::catch_unwind(AssertUnwindSafe(|| syncer.publish_downloads(batch)))
                        .unwrap_or_else(|_| {
                            let failed = || Outcome::Failed(RemoteError::local("flushing downloaded files failed unexpectedly"));
                            jobs.into_iter().map(|job| (job, failed())).collect()
                        });
                    // A pass that has gone leaves its files published and its rows queued:
                    // the next download of each finds the complete file (see verify).
                    let _ = done.send(flushed);
                }
            })
            .map_err(|e| Error::Misuse(format!("cannot start the flushing thread: {e}")))?;
        Ok(Publisher { to_flush: Some(to_flush), flushed, thread: Some(thread), pending: 0 })
    }

    /// Hands results over to be flushed; results that need no flush come back as they are.
    pub fn send(&mut self, batch: Results) -> Results {
        let (files, rest): (Results, Results) = batch.into_iter().partition(|(_, o)| matches!(o, Outcome::Downloaded { .. }));
        if !files.is_empty() {
            self.pending += files.len();
            if let Some(tx) = &self.to_flush {
                let _ = tx.send(files);
            }
        }
        rest
    }

    /// The channel that flushed batches come back on.
    pub fn flushed(&self) -> &Receiver<Results> {
        &self.flushed
    }

    /// Notes a batch taken back from [`Publisher::flushed`].
    pub fn taken(&mut self, batch: &Results) {
        self.pending = self.pending.saturating_sub(batch.len());
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Waits for every batch handed over to be flushed and returns them all.
    pub fn finish(&mut self) -> Results {
        self.stop();
        let all: Results = self.flushed.try_iter().flatten().collect();
        self.pending = 0;
        all
    }

    fn stop(&mut self) {
        self.to_flush = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Publisher {
    /// A pass that ends early still waits for the flush under way: a file is never left
    /// half-renamed by a thread nobody waits for.
    fn drop(&mut self) {
        self.stop();
    }
}
