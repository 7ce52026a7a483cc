//! The task that owns a session's connection: it sends the example's audio and `stop`, prints
//! the server's events (each seq once), and when the connection is lost without
//! `session.closed` it reconnects and resumes the session (docs/protocol.md, "Resume"),
//! resending the audio the server did not get.
//!
//! Reading and writing run concurrently (two futures of this one task), so events are read
//! while a send waits for the server (backpressure). The example hands audio over a small
//! bounded channel: while a send waits, or while the ring is full during a reconnect, the
//! example waits too.

use super::backoff::Backoff;
use super::connect::{close_detail, resume, Attempt, Resumed, Ws};
use super::printer::Printer;
use super::ring::AudioRing;
use super::{stop_message, Closed, Endpoint, Failure};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long to let the close handshake finish after `session.closed`, and how long the reader
/// may take to say why a send failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Close code of a connection whose session another connection took over: not resumed.
const CLOSE_TAKEN_OVER: u16 = 4002;
/// How far behind an event's `t_ms` the audio is counted as confirmed: rounding, and the few
/// milliseconds a flush adds to the pipeline's timeline.
const CONFIRM_MARGIN_MS: u64 = 100;

/// What the example asks of the task.
pub(super) enum Command {
    /// Whole sample frames of audio, at most one binary frame's worth.
    Audio(Vec<u8>),
    /// End the session (`stop`); the task then waits for `session.closed`.
    Stop,
}

/// What the session needs to be resumed (from `session.started`).
pub(super) struct Resume {
    pub(super) token: String,
    /// `resume.window_s`: how long after a loss the server keeps the session.
    pub(super) window: Duration,
}

/// One session's connection state across reconnects.
pub(super) struct Link {
    pub(super) program: &'static str,
    pub(super) endpoint: Endpoint,
    pub(super) token: Option<String>,
    pub(super) session_id: String,
    /// `None`: resume off (`--no-resume`, or the server does not offer it).
    pub(super) resume: Option<Resume>,
    /// Input sample frames per second.
    pub(super) rate: u32,
    pub(super) max_frame_bytes: usize,
    pub(super) json: bool,
    pub(super) reader: ReadState,
    pub(super) writer: WriteState,
}

/// What the reading half owns.
pub(super) struct ReadState {
    pub(super) printer: Printer,
    /// The highest seq printed (`session.started` is 0).
    pub(super) last_seq: u64,
    /// Seqs that never arrived (a jump past `last_seq + 1`).
    pub(super) gaps: u64,
}

/// What the writing half owns.
pub(super) struct WriteState {
    pub(super) ring: AudioRing,
    /// `stop` was asked for: sent again after a resume until `session.closed` comes.
    pub(super) stop_requested: bool,
    /// The uplink was dropped: no more commands will come.
    pub(super) commands_done: bool,
}

/// How one connection ended.
enum End {
    Closed(Closed),
    TakenOver(String),
    Lost(String),
}

impl Link {
    /// Serves connections until `session.closed`, resuming after each loss while it can.
    pub(super) async fn run(
        mut self,
        ws: Ws,
        mut commands: mpsc::Receiver<Command>,
    ) -> Result<Closed, Failure> {
        let (mut ws, mut resend) = (ws, Vec::new());
        loop {
            let end = self.serve(ws, resend, &mut commands).await;
            self.reader.printer.end_line();
            let why = match end {
                End::Closed(closed) => return Ok(closed),
                End::TakenOver(detail) => {
                    return Err(Failure::Session(format!(
                        "another connection took the session over{detail}; not resuming"
                    )))
                }
                End::Lost(why) => why,
            };
            if self.resume.is_none() {
                return Err(Failure::Session(why));
            }
            (ws, resend) = self.reconnect(why, &mut commands).await?;
        }
    }

    /// One connection: the reader and the writer until either ends it. `resend` goes out
    /// first (audio the server did not get before a loss), then `stop` if it was asked for.
    async fn serve(
        &mut self,
        ws: Ws,
        resend: Vec<u8>,
        commands: &mut mpsc::Receiver<Command>,
    ) -> End {
        let (sink, stream) = ws.split();
        let confirmed = AtomicU64::new(0);
        let reader = read(stream, &mut self.reader, &confirmed, self.rate);
        let writer = write(
            sink,
            resend,
            commands,
            &mut self.writer,
            &confirmed,
            self.max_frame_bytes,
        );
        tokio::pin!(reader, writer);
        tokio::select! {
            end = &mut reader => end,
            why = &mut writer => timeout(DRAIN_TIMEOUT, &mut reader)
                .await
                .unwrap_or(End::Lost(why)),
        }
    }

    /// Reconnects with backoff until the session is resumed, the server refuses, or the
    /// resume window has passed; audio the example hands over meanwhile goes to the ring
    /// while it has room. Returns the new connection and the audio to resend.
    async fn reconnect(
        &mut self,
        why: String,
        commands: &mut mpsc::Receiver<Command>,
    ) -> Result<(Ws, Vec<u8>), Failure> {
        let Some(resume_info) = &self.resume else {
            return Err(Failure::Session(why));
        };
        let (token, window) = (resume_info.token.clone(), resume_info.window);
        let lost_at = Instant::now();
        let deadline = lost_at + window;
        eprintln!(
            "{}: {why}; resuming session {}",
            self.program, self.session_id
        );
        let credential = self.token.clone();
        let mut backoff = Backoff::new();
        let mut attempts = 0u32;
        loop {
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                return Err(Failure::Session(format!(
                    "{why}; session {} not resumed within its {} s window ({attempts} attempts)",
                    self.session_id,
                    window.as_secs()
                )));
            }
            self.while_draining(tokio::time::sleep(delay), commands)
                .await;
            attempts += 1;
            let url = self
                .endpoint
                .resume_url(&self.session_id, &token, self.reader.last_seq);
            let attempt = resume(&url, credential.as_deref());
            match self.while_draining(attempt, commands).await {
                Ok((ws, resumed)) => {
                    let resend = self.resend_from(&resumed)?;
                    self.report_resumed(&resumed, lost_at.elapsed(), attempts);
                    return Ok((ws, resend));
                }
                Err(Attempt::Refused(failure)) => {
                    return Err(Failure::Session(format!(
                        "{why}; session {} could not be resumed: {failure}",
                        self.session_id
                    )))
                }
                Err(Attempt::Retry(e)) => {
                    eprintln!("{}: resume attempt {attempts} failed: {e}", self.program);
                }
            }
        }
    }

    /// The audio from the frame the server resumes at to the newest.
    fn resend_from(&self, resumed: &Resumed) -> Result<Vec<u8>, Failure> {
        let frame = resumed
            .input_frames
            .unwrap_or(resumed.audio_ms * u64::from(self.rate) / 1000);
        self.writer.ring.since_frame(frame).map_err(|(kept, sent)| {
            Failure::Session(format!(
                "session {} resumed at input frame {frame}, but this client keeps frames \
                 {kept} to {sent} only: the audio timeline cannot continue",
                self.session_id
            ))
        })
    }

    /// `resumed session ID after N ms, replayed K events` on stderr, or as a JSON line.
    fn report_resumed(&self, resumed: &Resumed, after: Duration, attempts: u32) {
        let after_ms = after.as_millis();
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "type": "client.resumed",
                    "session_id": self.session_id,
                    "after_ms": after_ms,
                    "replayed": resumed.replayed,
                    "audio_ms": resumed.audio_ms,
                    "attempts": attempts,
                })
            );
        } else {
            eprintln!(
                "{}: resumed session {} after {after_ms} ms, replayed {} events",
                self.program, self.session_id, resumed.replayed
            );
        }
    }

    /// Runs `fut` while taking the example's audio into the ring (as long as it has room for
    /// a whole binary frame, so that nothing is forgotten) and noting `stop`.
    async fn while_draining<T>(
        &mut self,
        fut: impl Future<Output = T>,
        commands: &mut mpsc::Receiver<Command>,
    ) -> T {
        tokio::pin!(fut);
        loop {
            let room = self.writer.ring.room() >= self.max_frame_bytes;
            let open = !self.writer.commands_done;
            tokio::select! {
                biased;
                out = &mut fut => return out,
                cmd = commands.recv(), if room && open => match cmd {
                    Some(Command::Audio(bytes)) => self.writer.ring.push(&bytes),
                    Some(Command::Stop) => self.writer.stop_requested = true,
                    None => self.writer.commands_done = true,
                },
            }
        }
    }
}

/// Reads server events until `session.closed` or the end of the connection: prints each seq
/// once, and notes in `confirmed` the input frames the events' times show the server has.
async fn read(
    mut stream: futures_util::stream::SplitStream<Ws>,
    state: &mut ReadState,
    confirmed: &AtomicU64,
    rate: u32,
) -> End {
    loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let detail = close_detail(frame.as_ref());
                if frame.is_some_and(|f| u16::from(f.code) == CLOSE_TAKEN_OVER) {
                    return End::TakenOver(detail);
                }
                return End::Lost(format!(
                    "the server closed the connection without session.closed{detail}"
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return End::Lost(format!("connection lost: {e}")),
            None => return End::Lost("connection closed without session.closed".into()),
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        if let Some(seq) = value.get("seq").and_then(Value::as_u64) {
            if seq <= state.last_seq {
                continue; // replayed after a resume, and already printed
            }
            state.gaps += seq - state.last_seq - 1;
            state.last_seq = seq;
        }
        let ms = match value.get("type").and_then(Value::as_str) {
            Some("flushed") => value.get("audio_ms"),
            _ => value.get("t_ms"),
        };
        if let Some(ms) = ms.and_then(Value::as_u64) {
            let frames = ms.saturating_sub(CONFIRM_MARGIN_MS) * u64::from(rate) / 1000;
            confirmed.fetch_max(frames, Relaxed);
        }
        let event = state.printer.print(text.as_str(), value);
        if event.kind == "session.closed" {
            // Let the close handshake finish (tungstenite answers the close frame).
            let drain = async {
                while let Some(Ok(m)) = stream.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            };
            let _ = timeout(DRAIN_TIMEOUT, drain).await;
            return End::Closed(Closed::from_event(&event.value));
        }
    }
}

/// Sends `resend`, then `stop` if asked for before, then the example's commands; every
/// chunk goes into the ring before it is sent. Returns why the connection failed.
async fn write(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    resend: Vec<u8>,
    commands: &mut mpsc::Receiver<Command>,
    state: &mut WriteState,
    confirmed: &AtomicU64,
    max_frame_bytes: usize,
) -> String {
    let lost = |e| format!("connection lost while sending: {e}");
    for part in resend.chunks(max_frame_bytes.max(1)) {
        if let Err(e) = sink.send(Message::binary(part.to_vec())).await {
            return lost(e);
        }
    }
    if state.stop_requested {
        if let Err(e) = sink.send(stop_message()).await {
            return lost(e);
        }
    }
    loop {
        let cmd = if state.commands_done {
            None
        } else {
            commands.recv().await
        };
        match cmd {
            Some(Command::Audio(bytes)) => {
                state.ring.confirm(confirmed.load(Relaxed));
                state.ring.push(&bytes);
                if let Err(e) = sink.send(Message::binary(bytes)).await {
                    return lost(e);
                }
            }
            Some(Command::Stop) => {
                state.stop_requested = true;
                if let Err(e) = sink.send(stop_message()).await {
                    return lost(e);
                }
            }
            None => {
                // Nothing more to send: the reader ends the connection.
                state.commands_done = true;
                std::future::pending::<()>().await;
            }
        }
    }
}
