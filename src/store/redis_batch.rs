//! Group commit for the issuance records: the one Redis write of every credential.
//!
//! Each request hands its commands to one writer task and waits for them to be written.
//! The writer sends what has gathered as one pipeline and answers every request in it when
//! Redis replies. Up to [`MAX_IN_FLIGHT`] pipelines may await their replies at once, on the
//! one multiplexed connection; when all are out, requests gather into the next. Each
//! pipeline is sent from a task of its own, so two batches may reach Redis in either order:
//! they hold requests that were in flight together, whose order carries no meaning. Redis
//! then reads, parses and replies once per batch rather than once per credential — its
//! per-command work is a fraction of that — and a lone request pays one scheduler yield.
//! (Measured: about +4 % tokens/s at 64 connections on one Redis for batching, and a
//! smaller idle share with several batches in flight.)
//!
//! A request returns only once its record is written (or has failed), exactly as a direct
//! write would: batching changes the syscalls, not the guarantee.

use std::sync::Arc;

use redis::Cmd;
use redis::aio::ConnectionManager;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;

/// Records per pipeline at most.
const MAX_BATCH: usize = 256;
/// Requests that may wait for the writer; more wait for room (back-pressure).
const QUEUE: usize = 4096;
/// Batches sent and not yet answered. More than one keeps Redis busy while an answer
/// travels back, instead of idling the broker.
const MAX_IN_FLIGHT: usize = 4;

struct Pending {
    commands: Vec<Cmd>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The handle requests write through; clones share the writer.
#[derive(Clone)]
pub(super) struct RecordWriter {
    tx: mpsc::Sender<Pending>,
}

impl RecordWriter {
    /// Starts the writer task on the current runtime; it ends when every handle is dropped.
    pub(super) fn spawn(conn: ConnectionManager, op: &'static str) -> RecordWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(conn, rx, op));
        RecordWriter { tx }
    }

    /// Writes `commands` (replies ignored) in the next batch; returns when it is written.
    pub(super) async fn write(&self, commands: Vec<Cmd>) -> Result<(), StoreError> {
        let gone = || StoreError::Unavailable("the Redis writer has stopped".into());
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Pending { commands, done })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(conn: ConnectionManager, mut rx: mpsc::Receiver<Pending>, op: &'static str) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // With every slot busy, requests gather in the queue and go out as one larger batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        // The requests being handled right now are about to add theirs: let them.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let commands = batch.iter().map(|p| p.commands.len()).sum();
        let mut pipe = redis::Pipeline::with_capacity(commands);
        let mut waiting = Vec::with_capacity(batch.len());
        for pending in batch {
            // Not `ignore()`d: that files each command in a hash set. The replies go to `()`,
            // which takes any; an error reply still fails the whole batch.
            for command in pending.commands {
                pipe.add_command(command);
            }
            waiting.push(pending.done);
        }
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let result = pipe
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| super::redis_store::map_err(op, e));
            drop(slot);
            for done in waiting {
                let _ = done.send(result.clone());
            }
        });
    }
}
