// AudioWorklet processor: collects the microphone's samples (channels averaged to mono) into
// chunks of `chunkFrames` frames and posts each chunk to the main thread as a Float32Array
// (its buffer transferred, not copied). Runs on the audio rendering thread at the
// AudioContext's own rate; nothing here resamples.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frames = options?.processorOptions?.chunkFrames;
    this.chunkFrames = Number.isInteger(frames) && frames > 0 ? frames : 960;
    this.chunk = new Float32Array(this.chunkFrames);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") {
        this.running = false;
      }
    };
  }

  process(inputs) {
    if (!this.running) {
      return false;
    }
    const channels = inputs[0];
    if (!channels || channels.length === 0) {
      // No input connected yet (or the track ended): keep the processor alive.
      return true;
    }
    const frames = channels[0].length;
    const count = channels.length;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (let c = 0; c < count; c++) {
        sum += channels[c][i];
      }
      this.chunk[this.filled++] = sum / count;
      if (this.filled === this.chunkFrames) {
        this.port.postMessage(this.chunk, [this.chunk.buffer]);
        this.chunk = new Float32Array(this.chunkFrames);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("voxrt-capture", CaptureProcessor);
