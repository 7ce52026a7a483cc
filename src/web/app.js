// voxrt microphone demo: captures the microphone through an AudioWorklet and streams it to
// this server over protocol v1 (docs/protocol.md) as mono pcm_f32le at the AudioContext's own
// rate (the server resamples), then shows the level, speech segments and the session summary.
//
// State for tests and tools is mirrored on <main id="app"> as data- attributes: data-state
// (idle, starting, connecting, streaming, stopping, closed, error), data-session-id,
// data-sample-rate, data-segments (completed speech segments), data-chunks-sent,
// data-last-error (the last error code) and data-closed-reason.

const CHUNK_MS = 20;
// Audio queued in the browser beyond this (the network or the server is behind) is dropped
// rather than buffered without bound. About 3 s at 44.1 kHz.
const MAX_BUFFERED_BYTES = 512 * 1024;
// How long Stop waits for session.closed before closing the connection itself.
const STOP_TIMEOUT_MS = 10000;
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
const summary = $("summary");

/** The run in progress (from Start until its connection closed), or null. */
let run = null;

function setState(state) {
  app.dataset.state = state;
  const active = ["starting", "connecting", "streaming"].includes(state);
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
    sessionId: "",
    sampleRate: "",
    lastError: "",
    closedReason: "",
    chunksSent: "0",
  });
  statusLine.classList.remove("error");
  list.replaceChildren();
  timeline.replaceChildren(cursor);
  noSegments.hidden = false;
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

function connect(r, rate) {
  setState("connecting");
  setStatus("Connecting…");
  let ws;
  try {
    ws = new WebSocket(streamUrl(rate));
  } catch (err) {
    return fail(
      r,
      new PageError("connection_blocked", `the browser would not open the connection (${err?.name ?? err})`),
    );
  }
  ws.binaryType = "arraybuffer";
  r.ws = ws;
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") {
      return;
    }
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    handleEvent(r, msg);
  };
  ws.onclose = (event) => closed(r, event);
}

function handleEvent(r, msg) {
  switch (msg.type) {
    case "session.started":
      r.started = true;
      app.dataset.sessionId = msg.session_id;
      $("session-id").textContent = msg.session_id;
      if (!r.stopping) {
        r.source.connect(r.node);
        setState("streaming");
        setStatus("Streaming. Speak; press Stop to end the session.");
      }
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
  if (r.stopping || !r.started || !ws || ws.readyState !== WebSocket.OPEN) {
    return;
  }
  if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
    r.dropped += 1;
    updateSent(r);
    return;
  }
  let bytes = samples.buffer;
  if (!LITTLE_ENDIAN) {
    const view = new DataView(new ArrayBuffer(samples.length * 4));
    samples.forEach((s, i) => view.setFloat32(i * 4, s, true));
    bytes = view.buffer;
  }
  ws.send(bytes);
  r.chunksSent += 1;
  r.framesSent += samples.length;
  app.dataset.chunksSent = String(r.chunksSent);
  updateSent(r);
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
  r.stopTimer = setTimeout(() => ws.close(1000, "stop timed out"), STOP_TIMEOUT_MS);
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

function closed(r, event) {
  clearTimeout(r.stopTimer);
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
  showError("connection_lost", `the connection closed with code ${event.code}${why}`);
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
    r.stopping = true;
    releaseAudio(r);
    r.ws?.close();
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
