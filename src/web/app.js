// voxrt microphone demo: captures the microphone through an AudioWorklet and streams it to
// this server over protocol v1 (docs/protocol.md) as mono pcm_f32le at the AudioContext's own
// rate (the server resamples), then shows the level, speech segments and the session summary.
//
// When the connection is lost without session.closed (and the server offered resume in
// session.started), the page keeps capturing, reconnects with exponential backoff and jitter
// within the resume window, resumes the session (docs/protocol.md, "Resume"), resends the
// audio the server did not get, and shows each event once (by seq). Browsers do not expose
// why an upgrade was refused, so a refused resume is retried until the window has passed.
//
// State for tests and tools is mirrored on <main id="app"> as data- attributes: data-state
// (idle, starting, connecting, streaming, reconnecting, stopping, closed, error),
// data-session-id, data-sample-rate, data-segments (completed speech segments),
// data-chunks-sent, data-resumes (times the session was resumed), data-last-error (the last
// error code) and data-closed-reason.

const CHUNK_MS = 20;
// Audio queued in the browser beyond this (the network or the server is behind) is dropped
// rather than buffered without bound. About 3 s at 44.1 kHz.
const MAX_BUFFERED_BYTES = 512 * 1024;
// How long Stop waits for session.closed before closing the connection itself.
const STOP_TIMEOUT_MS = 10000;
// Reconnect delays: attempt n waits between half and all of min(first * 2^n, max).
const RESUME_FIRST_DELAY_MS = 100;
const RESUME_MAX_DELAY_MS = 4000;
// Audio counts as confirmed this far behind an event's t_ms (rounding, a flush's padding).
const CONFIRM_MARGIN_MS = 100;
// Close code of a connection whose session another connection took over: not resumed.
const CLOSE_TAKEN_OVER = 4002;
// The timeline shows at least this much of the session.
const TIMELINE_MIN_MS = 10000;
// Entries kept in the segment list (the count keeps counting).
const MAX_LISTED_SEGMENTS = 200;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

const $ = (id) => document.getElementById(id);
const app = $("app");
const form = $("controls");
const button = $("start");
const tokenInput = $("token");
const statusLine = $("status");
const meter = $("level");
const levelText = $("level-text");
const speech = $("speech");
const timeline = $("timeline");
const cursor = $("cursor");
const list = $("segments");
const noSegments = $("no-segments");
const transcripts = $("transcripts");
const noTranscripts = $("no-transcripts");
const summary = $("summary");

/** The run in progress (from Start until its connection closed), or null. */
let run = null;

function setState(state) {
  app.dataset.state = state;
  const active = ["starting", "connecting", "streaming", "reconnecting"].includes(state);
  button.textContent = active ? "Stop" : state === "stopping" ? "Stopping…" : "Start";
  button.setAttribute("aria-pressed", String(active));
  button.disabled = state === "stopping";
  tokenInput.disabled = active || state === "stopping";
}

function setStatus(text) {
  statusLine.textContent = text;
}

function showError(code, message) {
  app.dataset.lastError = code;
  statusLine.classList.add("error");
  setStatus(`Error ${code}: ${message}`);
}

const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

function resetView() {
  Object.assign(app.dataset, {
    segments: "0",
    transcripts: "0",
    sessionId: "",
    sampleRate: "",
    lastError: "",
    closedReason: "",
    chunksSent: "0",
    resumes: "0",
  });
  statusLine.classList.remove("error");
  list.replaceChildren();
  timeline.replaceChildren(cursor);
  noSegments.hidden = false;
  transcripts.replaceChildren();
  noTranscripts.hidden = false;
  summary.hidden = true;
  $("session-id").textContent = "–";
  $("capture-format").textContent = "–";
  $("sent").textContent = "–";
  setLevel(null);
  setSpeaking(false);
}

function setLevel(level) {
  if (!level) {
    meter.value = meter.min;
    meter.textContent = "– dBFS";
    levelText.textContent = "– dBFS";
    return;
  }
  const rms = Number(level.rms_dbfs);
  const peak = Number(level.peak_dbfs);
  meter.value = Math.max(meter.min, Math.min(meter.max, rms));
  meter.textContent = `${rms.toFixed(1)} dBFS`;
  levelText.textContent = `${rms.toFixed(1)} dBFS (peak ${peak.toFixed(1)})`;
}

function setSpeaking(on) {
  speech.dataset.speaking = String(on);
  speech.textContent = on ? "speech" : "silence";
}

// ---------------------------------------------------------------------------------------
// Speech segments: a list and a timeline scaled to the whole session.
// ---------------------------------------------------------------------------------------

function segmentStarted(r, tMs) {
  const seg = { start: tMs, end: null, item: document.createElement("li"), block: null };
  seg.block = document.createElement("div");
  seg.block.className = "segment open";
  timeline.append(seg.block);
  seg.item.className = "open";
  seg.item.dataset.startMs = String(tMs);
  seg.item.textContent = `at ${seconds(tMs)}: speaking…`;
  list.append(seg.item);
  noSegments.hidden = true;
  r.segments.push(seg);
  r.open = seg;
  setSpeaking(true);
  layoutTimeline(r);
}

function segmentEnded(r, tMs, durationMs) {
  const seg = r.open ?? segmentFromEnd(r, tMs, durationMs);
  r.open = null;
  seg.end = tMs;
  seg.start = tMs - durationMs;
  seg.block.className = "segment";
  seg.item.className = "";
  Object.assign(seg.item.dataset, {
    startMs: String(seg.start),
    endMs: String(tMs),
    durationMs: String(durationMs),
  });
  seg.item.textContent = `at ${seconds(seg.start)}, ${seconds(durationMs)} long`;
  r.completed += 1;
  app.dataset.segments = String(r.completed);
  while (list.children.length > MAX_LISTED_SEGMENTS) {
    list.firstElementChild.remove();
  }
  setSpeaking(false);
  layoutTimeline(r);
}

/** A transcript (stt): listed under the segments with where its speech was. */
function addTranscript(msg) {
  const item = document.createElement("li");
  const start = Number(msg.t_ms) || 0;
  const end = Number(msg.end_ms) || 0;
  Object.assign(item.dataset, { startMs: String(start), endMs: String(end) });
  item.textContent = `${seconds(start)}–${seconds(end)}: ${String(msg.text ?? "")}`;
  transcripts.append(item);
  noTranscripts.hidden = true;
  app.dataset.transcripts = String(transcripts.children.length);
  while (transcripts.children.length > MAX_LISTED_SEGMENTS) {
    transcripts.firstElementChild.remove();
  }
}

/** A speech_end without its speech_start (not expected): still listed. */
function segmentFromEnd(r, tMs, durationMs) {
  segmentStarted(r, tMs - durationMs);
  return r.open;
}

function layoutTimeline(r) {
  const span = Math.max(TIMELINE_MIN_MS, r.nowMs);
  for (const seg of r.segments) {
    const end = seg.end ?? r.nowMs;
    seg.block.style.left = `${(100 * seg.start) / span}%`;
    seg.block.style.width = `${(100 * Math.max(0, end - seg.start)) / span}%`;
  }
  cursor.style.left = `${(100 * r.nowMs) / span}%`;
  // Old blocks beyond what the list keeps leave the timeline too.
  while (r.segments.length > MAX_LISTED_SEGMENTS) {
    r.segments.shift().block.remove();
  }
}

// ---------------------------------------------------------------------------------------
// Start, stream, stop.
// ---------------------------------------------------------------------------------------

class PageError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Maps getUserMedia / AudioContext failures to something a user can act on. */
function microphoneError(err) {
  if (err instanceof PageError) {
    return err;
  }
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new PageError(
        "microphone_denied",
        "the microphone permission was denied; allow it for this page and press Start again",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new PageError("no_microphone", "no microphone was found; connect one and press Start again");
    case "NotReadableError":
    case "AbortError":
      return new PageError(
        "microphone_busy",
        "the microphone could not be opened (another application may be using it)",
      );
    default:
      return new PageError("audio_failed", `the audio input could not start (${err?.name ?? err})`);
  }
}

async function start() {
  resetView();
  // Created inside the click, so autoplay rules let it run; at the device's native rate.
  let ctx;
  try {
    ctx = new AudioContext();
  } catch (err) {
    return fail(null, microphoneError(err));
  }
  const r = {
    ctx,
    ws: null,
    stream: null,
    source: null,
    node: null,
    sink: null,
    started: false,
    userStopped: false,
    closedEvent: null,
    stopping: false,
    stopTimer: null,
    segments: [],
    open: null,
    completed: 0,
    nowMs: 0,
    chunksSent: 0,
    framesSent: 0,
    dropped: 0,
    // Resume: the offer from session.started, the highest seq shown, whether a connection
    // is serving the session now, when it was lost, and the audio not yet confirmed.
    resume: null,
    lastSeq: 0,
    live: false,
    lostAt: null,
    attempt: 0,
    resumeTimer: null,
    resumes: 0,
    unconfirmed: null,
  };
  run = r;
  setState("starting");
  setStatus("Opening the microphone…");
  try {
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new PageError(
        "insecure_context",
        "browsers allow the microphone only on https:// pages or on http://localhost and " +
          "http://127.0.0.1; open this page that way",
      );
    }
    r.stream = await navigator.mediaDevices.getUserMedia({
      audio: {
        channelCount: { ideal: 1 },
        echoCancellation: false,
        noiseSuppression: false,
        autoGainControl: false,
      },
      video: false,
    });
    if (run !== r) {
      return releaseAudio(r);
    }
    await ctx.audioWorklet.addModule("/capture-worklet.js");
    await ctx.resume();
  } catch (err) {
    return run === r ? fail(r, microphoneError(err)) : releaseAudio(r);
  }
  if (run !== r) {
    return releaseAudio(r);
  }
  const rate = ctx.sampleRate;
  app.dataset.sampleRate = String(rate);
  const track = r.stream.getAudioTracks()[0];
  $("capture-format").textContent =
    `${track?.label || "microphone"}, ${rate} Hz, sent as mono pcm_f32le in ${CHUNK_MS} ms chunks`;
  r.source = ctx.createMediaStreamSource(r.stream);
  r.node = new AudioWorkletNode(ctx, "voxrt-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { chunkFrames: Math.round((rate * CHUNK_MS) / 1000) },
  });
  r.node.port.onmessage = (event) => sendChunk(r, event.data);
  // The node must be pulled by the graph to run: a muted path to the speakers.
  r.sink = ctx.createGain();
  r.sink.gain.value = 0;
  r.node.connect(r.sink).connect(ctx.destination);
  connect(r, rate);
}

function streamUrl(rate) {
  const url = new URL("/v1/stream", window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams({
    sample_rate: String(rate),
    channels: "1",
    encoding: "pcm_f32le",
  });
  const token = tokenInput.value.trim();
  if (token) {
    params.set("access_token", token);
  }
  url.search = params.toString();
  return url;
}

function resumeUrl(r) {
  const url = new URL("/v1/stream", window.location.href);
  url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams({
    resume: app.dataset.sessionId,
    resume_token: r.resume.token,
    last_seq: String(r.lastSeq),
  });
  const token = tokenInput.value.trim();
  if (token) {
    params.set("access_token", token);
  }
  url.search = params.toString();
  return url;
}

function connect(r, rate) {
  setState("connecting");
  setStatus("Connecting…");
  open(r, streamUrl(rate));
}

/** Opens a connection for the run; false when the browser would not. */
function open(r, url) {
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (err) {
    fail(
      r,
      new PageError("connection_blocked", `the browser would not open the connection (${err?.name ?? err})`),
    );
    return false;
  }
  ws.binaryType = "arraybuffer";
  r.ws = ws;
  ws.onmessage = (event) => {
    if (typeof event.data !== "string" || ws !== r.ws) {
      return;
    }
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    if (typeof msg.seq === "number") {
      if (msg.seq <= r.lastSeq && msg.type !== "session.started") {
        return; // replayed after a resume, and already shown
      }
      r.lastSeq = msg.seq;
    }
    confirmAudio(r, msg);
    handleEvent(r, msg);
  };
  ws.onclose = (event) => connectionClosed(r, ws, event);
  return true;
}

function handleEvent(r, msg) {
  switch (msg.type) {
    case "session.started":
      r.started = true;
      r.live = true;
      app.dataset.sessionId = msg.session_id;
      $("session-id").textContent = msg.session_id;
      if (msg.resume && msg.resume.token && msg.resume.window_s > 0) {
        r.resume = msg.resume;
        r.unconfirmed = new AudioRing(Math.round(msg.resume.window_s * r.ctx.sampleRate));
      }
      if (!r.stopping) {
        r.source.connect(r.node);
        setState("streaming");
        setStatus("Streaming. Speak; press Stop to end the session.");
      }
      break;
    case "session.resumed":
      resumed(r, msg);
      break;
    case "level":
      r.nowMs = Math.max(r.nowMs, Number(msg.t_ms) || 0);
      setLevel(msg);
      layoutTimeline(r);
      break;
    case "vad":
      r.nowMs = Math.max(r.nowMs, Number(msg.t_ms) || 0);
      if (msg.event === "speech_start") {
        segmentStarted(r, Number(msg.t_ms));
      } else if (msg.event === "speech_end") {
        segmentEnded(r, Number(msg.t_ms), Number(msg.duration_ms));
      }
      break;
    case "transcript":
      addTranscript(msg);
      break;
    case "error":
      showError(String(msg.code), String(msg.message));
      break;
    case "session.closed":
      r.closedEvent = msg;
      showSummary(msg);
      break;
    default:
      // pong, flushed, and events of user processors: nothing to show.
      break;
  }
}

function sendChunk(r, samples) {
  const ws = r.ws;
  if (r.stopping || !r.started) {
    return;
  }
  if (!r.live) {
    // Reconnecting: keep the audio for the resumed session while the ring has room.
    if (r.unconfirmed?.hasRoom(samples.length)) {
      r.unconfirmed.push(samples);
    } else {
      r.dropped += 1;
      updateSent(r);
    }
    return;
  }
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    return;
  }
  if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
    r.dropped += 1;
    updateSent(r);
    return;
  }
  r.unconfirmed?.push(samples);
  ws.send(wireBytes(samples));
  r.chunksSent += 1;
  r.framesSent += samples.length;
  app.dataset.chunksSent = String(r.chunksSent);
  updateSent(r);
}

/** Float32 samples as pcm_f32le bytes. */
function wireBytes(samples) {
  let bytes = samples.buffer;
  if (!LITTLE_ENDIAN) {
    const view = new DataView(new ArrayBuffer(samples.length * 4));
    samples.forEach((s, i) => view.setFloat32(i * 4, s, true));
    bytes = view.buffer;
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------
// Resume after a connection loss.
// ---------------------------------------------------------------------------------------

/**
 * The audio sent (or captured while reconnecting) that the server has not confirmed, by
 * input frame. Bounded to the resume window's worth of audio (resume.window_s): the server
 * keeps a lost session only that long, so a live microphone never needs more while
 * disconnected, and while connected the server confirms audio (in its events' t_ms) well
 * within that time. While connected the oldest audio goes when it is full; while
 * reconnecting new audio is dropped instead (and counted), so nothing a resume needs is lost.
 */
class AudioRing {
  constructor(capacityFrames) {
    this.capacity = capacityFrames;
    this.chunks = []; // [{ start, samples }], oldest first
    this.frames = 0; // frames held
    this.end = 0; // input frame index of the next push
  }

  hasRoom(n) {
    return this.frames + n <= this.capacity;
  }

  push(samples) {
    this.chunks.push({ start: this.end, samples });
    this.end += samples.length;
    this.frames += samples.length;
    while (this.frames > this.capacity && this.chunks.length > 0) {
      this.frames -= this.chunks.shift().samples.length;
    }
  }

  /** Forgets whole chunks before input frame `frame`. */
  confirm(frame) {
    while (this.chunks.length > 0) {
      const c = this.chunks[0];
      if (c.start + c.samples.length > frame) {
        break;
      }
      this.frames -= c.samples.length;
      this.chunks.shift();
    }
  }

  /** The audio from input frame `frame` on, or null when it is no longer all kept. */
  from(frame) {
    const first = this.chunks.length > 0 ? this.chunks[0].start : this.end;
    if (frame < first || frame > this.end) {
      return null;
    }
    const out = [];
    for (const c of this.chunks) {
      const skip = Math.max(0, frame - c.start);
      if (skip < c.samples.length) {
        out.push(skip > 0 ? c.samples.subarray(skip) : c.samples);
      }
    }
    return out;
  }
}

/** Events' times show which audio the server has: forget it. */
function confirmAudio(r, msg) {
  const ms = msg.type === "flushed" ? Number(msg.audio_ms) : Number(msg.t_ms);
  if (r.unconfirmed && Number.isFinite(ms)) {
    const frame = Math.floor((Math.max(0, ms - CONFIRM_MARGIN_MS) * r.ctx.sampleRate) / 1000);
    r.unconfirmed.confirm(frame);
  }
}

/** A connection of the run closed: resume the session, or end the run. */
function connectionClosed(r, ws, event) {
  if (ws !== r.ws) {
    return; // an older connection of this run
  }
  const wasLive = r.live;
  r.live = false;
  const resumable =
    r.started && r.resume && !r.closedEvent && event.code !== CLOSE_TAKEN_OVER && run === r;
  if (!resumable) {
    return closed(r, event, wasLive);
  }
  if (r.lostAt === null) {
    r.lostAt = performance.now();
    r.attempt = 0;
    setState("reconnecting");
    setStatus(`Connection lost (code ${event.code}); reconnecting…`);
  }
  const delay =
    Math.min(RESUME_FIRST_DELAY_MS * 2 ** Math.min(r.attempt, 16), RESUME_MAX_DELAY_MS) *
    (0.5 + Math.random() / 2);
  r.attempt += 1;
  if (performance.now() - r.lostAt + delay >= r.resume.window_s * 1000) {
    return fail(
      r,
      new PageError(
        "resume_failed",
        `the connection was lost and the session could not be resumed within its ` +
          `${r.resume.window_s} s window (${r.attempt - 1} attempts)`,
      ),
    );
  }
  r.resumeTimer = setTimeout(() => {
    r.resumeTimer = null;
    if (run === r) {
      open(r, resumeUrl(r));
    }
  }, delay);
}

/** session.resumed: resend what the server did not get, and carry on. */
function resumed(r, msg) {
  const rate = r.ctx.sampleRate;
  const frame = Number.isFinite(Number(msg.input_frames))
    ? Number(msg.input_frames)
    : Math.round((Number(msg.audio_ms) * rate) / 1000);
  const resend = r.unconfirmed?.from(frame);
  if (!resend) {
    return fail(
      r,
      new PageError(
        "resume_failed",
        `the session resumed at ${seconds((1000 * frame) / rate)} of audio, which this page ` +
          "no longer has; the session's audio cannot continue",
      ),
    );
  }
  for (const samples of resend) {
    r.ws.send(wireBytes(samples));
  }
  const afterMs = Math.round(performance.now() - r.lostAt);
  r.lostAt = null;
  r.live = true;
  r.resumes += 1;
  app.dataset.resumes = String(r.resumes);
  if (r.userStopped) {
    setState("stopping");
    r.ws.send(JSON.stringify({ type: "stop" }));
  } else {
    setState("streaming");
  }
  statusLine.classList.remove("error");
  setStatus(
    `Streaming (resumed after ${afterMs} ms, replayed ${Number(msg.replayed) || 0} events). ` +
      "Speak; press Stop to end the session.",
  );
}

function updateSent(r) {
  const audio = seconds((1000 * r.framesSent) / r.ctx.sampleRate);
  const dropped = r.dropped ? `, ${r.dropped} dropped (connection too slow)` : "";
  $("sent").textContent = `${r.chunksSent} chunks, ${audio}${dropped}`;
}

function stop(r) {
  if (r.stopping) {
    return;
  }
  r.stopping = true;
  r.userStopped = true;
  releaseAudio(r);
  if (r.started && !r.live) {
    // Reconnecting: give up; the server ends the session after its resume window.
    clearTimeout(r.resumeTimer);
    r.resume = null;
    const ws = r.ws;
    run = null;
    ws?.close();
    setState("idle");
    setStatus("Stopped while reconnecting; the server ends the session after its resume window.");
    return;
  }
  const ws = r.ws;
  if (!ws || ws.readyState === WebSocket.CLOSED) {
    run = null;
    setState("idle");
    setStatus("Stopped.");
    return;
  }
  setState("stopping");
  if (ws.readyState === WebSocket.CONNECTING) {
    // Nothing was streamed yet: no summary to wait for.
    ws.close();
    return;
  }
  setStatus("Stopping: waiting for the session summary…");
  ws.send(JSON.stringify({ type: "stop" }));
  r.stopTimer = setTimeout(() => {
    r.resume = null; // no summary in time: not worth resuming for
    r.ws?.close(1000, "stop timed out");
  }, STOP_TIMEOUT_MS);
}

function releaseAudio(r) {
  r.node?.port.postMessage("stop");
  r.source?.disconnect();
  r.node?.disconnect();
  r.sink?.disconnect();
  r.stream?.getTracks().forEach((t) => t.stop());
  if (r.ctx.state !== "closed") {
    r.ctx.close().catch(() => {});
  }
}

function closed(r, event, wasLive) {
  clearTimeout(r.stopTimer);
  clearTimeout(r.resumeTimer);
  r.stopping = true;
  releaseAudio(r);
  if (run === r) {
    run = null;
  }
  setSpeaking(false);
  if (!r.started && r.userStopped) {
    setState("idle");
    setStatus("Stopped.");
    return;
  }
  if (!r.started) {
    return fail(
      null,
      new PageError(
        "connection_refused",
        "the server refused the connection or could not be reached (browsers do not say " +
          "which). Check the access token if the server requires one, and that this page's " +
          `origin, ${window.location.origin}, is in security.allowed_origins if that list ` +
          "is set; the server's log has the reason.",
      ),
    );
  }
  const reason = r.closedEvent?.reason;
  if (reason) {
    app.dataset.closedReason = reason;
    setState(reason === "error" ? "error" : "closed");
    if (reason !== "error") {
      setStatus(`Session closed (${reason}).`);
    }
    return;
  }
  setState("error");
  const why = event.reason ? `: ${event.reason}` : "";
  if (event.code === CLOSE_TAKEN_OVER) {
    showError("session_taken_over", `another connection took the session over${why}`);
  } else if (!wasLive && r.started) {
    showError("resume_failed", `a resume attempt closed with code ${event.code}${why}`);
  } else {
    showError("connection_lost", `the connection closed with code ${event.code}${why}`);
  }
}

function showSummary(msg) {
  const s = msg.stats ?? {};
  $("closed-reason").textContent = String(msg.reason);
  $("closed-audio").textContent = seconds(Number(s.audio_ms) || 0);
  $("closed-chunks-in").textContent = String(s.chunks_in);
  $("closed-chunks-processed").textContent = String(s.chunks_processed);
  $("closed-chunks-dropped").textContent = String(s.chunks_dropped);
  summary.hidden = false;
}

function fail(r, err) {
  if (r) {
    clearTimeout(r.resumeTimer);
    r.resume = null;
    r.stopping = true;
    releaseAudio(r);
    if (r.ws) {
      r.ws.onclose = null; // this error is what the page shows, not the close
      r.ws.close();
    }
    if (run === r) {
      run = null;
    }
  }
  setState("error");
  showError(err.code, err.message);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (run) {
    stop(run);
  } else {
    start().catch((err) => fail(run, new PageError("internal_error", String(err?.message ?? err))));
  }
});

window.addEventListener("pagehide", () => {
  if (run) {
    stop(run);
  }
});

setState("idle");
app.dataset.ready = "true";
