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
//! write would: batching changes the syscalls, not the guarantee. Replies are handed back
//! per request: a command Redis refuses fails its own request, not the batch's others.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisError, Value};
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
    /// The command whose reply the request wants back.
    reply: usize,
    done: oneshot::Sender<Result<Value, StoreError>>,
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

    /// Writes `commands` in the next batch; returns, once they are written, the reply to
    /// `commands[reply]`, or the first error Redis answered any of them with.
    pub(super) async fn write(
        &self,
        commands: Vec<Cmd>,
        reply: usize,
    ) -> Result<Value, StoreError> {
        let gone = || StoreError::Unavailable("the Redis writer has stopped".into());
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                commands,
                reply,
                done,
            })
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
        // Error replies come back in place, to be charged to their own request.
        pipe.ignore_errors();
        let mut waiting = Vec::with_capacity(batch.len());
        for pending in batch {
            waiting.push((pending.commands.len(), pending.reply, pending.done));
            for command in pending.commands {
                pipe.add_command(command);
            }
        }
        let mut conn = conn.clone();
        tokio::spawn(async move {
            let result = pipe.query_async::<Vec<Value>>(&mut conn).await;
            drop(slot);
            let mut replies = match result {
                Ok(replies) => replies.into_iter(),
                Err(e) => {
                    let e = super::redis_store::map_err(op, e);
                    for (_, _, done) in waiting {
                        let _ = done.send(Err(e.clone()));
                    }
                    return;
                }
            };
            for (count, reply, done) in waiting {
                let answer = answer(replies.by_ref().take(count), reply)
                    .map_err(|e| super::redis_store::map_err(op, e));
                let _ = done.send(answer);
            }
        });
    }
}

/// One request's reply from its share of the pipeline's replies, all of which it takes.
fn answer(replies: impl Iterator<Item = Value>, wanted: usize) -> Result<Value, RedisError> {
    let mut kept = None;
    let mut refused = None;
    for (i, value) in replies.enumerate() {
        match value {
            Value::ServerError(e) => {
                refused.get_or_insert(e);
            }
            value if i == wanted => kept = Some(value),
            _ => {}
        }
    }
    match (refused, kept) {
        (Some(e), _) => Err(e.into()),
        (None, Some(value)) => Ok(value),
        (None, None) => Err((redis::ErrorKind::UnexpectedReturnType, "a reply is missing").into()),
    }
}
