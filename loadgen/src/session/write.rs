//! A session's writer: the recording at real time, and pings.

use super::{stop_requested, Plan, SessionState, StopSignal, WsSink};
use futures_util::SinkExt;
use std::sync::atomic::Ordering::Relaxed;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Most chunks one wake-up of a writer buffers before it flushes (catching up after a stall
/// or a resume): 16 chunks of 20 ms at 48 kHz mono s16 are 31 KiB.
const MAX_BATCH: u64 = 16;
/// The writer's state across the connections of one session: where the audio is.
pub(super) struct WriteState {
    /// When chunk 0 was due; chunk `k` is due at `first + plan.due(k)`.
    pub(super) first: Instant,
    /// The next chunk to send.
    pub(super) k: u64,
    /// Sample frames of chunk `k` the server already has (after a resume mid-chunk).
    pub(super) skip_frames: u64,
    pub(super) next_ping: Instant,
}

/// Sends chunk `k` at `first + plan.due(k)` and a ping every `plan.ping_every`, until the
/// stop signal. Gives the sink back; `Err` if a send failed (the connection is gone).
///
/// Built to cost little per chunk, since it runs 50 times a second per session: one timer,
/// reset to the next due instant rather than created anew; the stop signal's waiter
/// registered once, not per chunk; and whatever is due at a wake-up (a ping and its chunk,
/// or the chunks of a stall being caught up, at most [`MAX_BATCH`]) buffered and written
/// with one flush, so one system call. Late chunks go out at once, catching up as
/// `MissedTickBehavior::Burst` would; after a resume that resends what the server did not
/// get. Every chunk of one flush gets the flush's instant as its send time.
pub(super) async fn write_audio(
    mut sink: WsSink,
    plan: &Plan,
    state: &SessionState,
    at: &mut WriteState,
    epoch: Instant,
    mut stop: StopSignal,
) -> (WsSink, Result<(), String>) {
    let chunks = &plan.recording.chunks;
    let bytes_per_frame =
        plan.recording.chunk_bytes() / plan.recording.frames_per_chunk.max(1) as usize;
    let stopped = stop_requested(&mut stop);
    tokio::pin!(stopped);
    let timer = sleep_until(at.first + plan.due(at.k));
    tokio::pin!(timer);
    loop {
        let due = at.first + plan.due(at.k);
        timer.as_mut().reset(due.min(at.next_ping));
        tokio::select! {
            biased;
            // Also when the orchestrator is gone: stop as if told to.
            _ = &mut stopped => return (sink, Ok(())),
            _ = &mut timer => {}
        }
        let now = Instant::now();
        if now >= at.next_ping {
            let id = u64::try_from((now - epoch).as_micros()).unwrap_or(u64::MAX);
            let ping = Message::text(format!(r#"{{"type":"ping","id":{id}}}"#));
            if let Err(e) = sink.feed(ping).await {
                return (
                    sink,
                    Err(format!("connection lost while sending a ping: {e}")),
                );
            }
            // Pings are not caught up after a stall: one per interval from now.
            at.next_ping = (at.next_ping + plan.ping_every).max(now);
        }
        let mut batch = 0u64;
        while batch < MAX_BATCH && at.first + plan.due(at.k + batch) <= now {
            let k = at.k + batch;
            let mut chunk = chunks[(k % chunks.len() as u64) as usize].clone();
            if batch == 0 && at.skip_frames > 0 {
                let skip = (at.skip_frames as usize * bytes_per_frame).min(chunk.len());
                chunk = chunk.slice(skip..);
            }
            if let Err(e) = sink.feed(Message::Binary(chunk)).await {
                return (
                    sink,
                    Err(format!("connection lost while sending audio: {e}")),
                );
            }
            batch += 1;
        }
        if let Err(e) = sink.flush().await {
            return (sink, Err(format!("connection lost while sending: {e}")));
        }
        if batch > 0 {
            let sent = Instant::now().into_std();
            let mut ring = state.ring();
            for _ in 0..batch {
                ring.push(sent);
            }
            drop(ring);
            state.chunks_sent.fetch_add(batch, Relaxed);
            at.k += batch;
            at.skip_frames = 0;
        }
    }
}
