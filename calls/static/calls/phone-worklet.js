// The web phone's microphone path, on the audio thread: low-pass below 4 kHz, resample to the
// phone line's 8 kHz, encode G.711 mu-law and post 20 ms frames (160 bytes) to the page.
"use strict";

const LINE_RATE = 8000;
const FRAME_BYTES = 160;
const CUTOFF_HZ = 3400; // what a phone line carries; the filter's skirt ends near 4 kHz

// Blackman-windowed sinc, normalised so a constant passes unchanged. About 4 ms long: at
// 48 kHz, 193 taps, evaluated only at the 8000 output points a second.
function lowPassTaps(rate) {
  const count = 2 * Math.ceil(rate / 500) + 1;
  const middle = (count - 1) / 2;
  const cutoff = Math.min(CUTOFF_HZ, 0.45 * rate) / rate;
  const taps = new Float32Array(count);
  let total = 0;
  for (let i = 0; i < count; i++) {
    const x = i - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const phase = (2 * Math.PI * i) / (count - 1);
    taps[i] = sinc * (0.42 - 0.5 * Math.cos(phase) + 0.08 * Math.cos(2 * phase));
    total += taps[i];
  }
  for (let i = 0; i < count; i++) taps[i] /= total;
  return taps;
}

// G.711 mu-law of a signed 16-bit sample, on its 14-bit magnitude (as in the ITU's reference
// code, and byte for byte as calls/fakes/mulaw.py encodes).
function linearToUlaw(sample) {
  let value = sample >> 2;
  let mask = 0xff;
  if (value < 0) {
    value = -value;
    mask = 0x7f;
  }
  value = Math.min(value, 8159) + 33;
  let segment = 0;
  while (segment < 8 && value > (0x3f << segment) + (1 << segment) - 1) segment++;
  if (segment >= 8) return 0x7f ^ mask;
  return ((segment << 4) | ((value >> (segment + 1)) & 0x0f)) ^ mask;
}

class PhoneCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.taps = lowPassTaps(sampleRate);
    this.half = (this.taps.length - 1) / 2;
    this.step = sampleRate / LINE_RATE; // input samples per line sample (6 at 48 kHz)
    // Input not yet consumed, starting with half a filter of zeros so that the first output
    // sample is centred on the first input sample; ``at`` is the next output's position in it.
    this.pending = new Float32Array(this.half);
    this.at = this.half;
    this.frame = new Uint8Array(FRAME_BYTES);
    this.filled = 0;
  }

  filtered(samples, centre) {
    const taps = this.taps;
    const start = centre - this.half;
    let sum = 0;
    for (let j = 0; j < taps.length; j++) sum += taps[j] * samples[start + j];
    return sum;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no microphone data this quantum
    const length = channels[0].length;
    const samples = new Float32Array(this.pending.length + length);
    samples.set(this.pending);
    for (let i = 0; i < length; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      samples[this.pending.length + i] = sum / channels.length;
    }
    // Output points between input samples (44.1 kHz) interpolate two filtered values.
    while (Math.floor(this.at) + 1 + this.half < samples.length) {
      const whole = Math.floor(this.at);
      const fraction = this.at - whole;
      let value = this.filtered(samples, whole);
      if (fraction > 0) value += fraction * (this.filtered(samples, whole + 1) - value);
      this.push(value);
      this.at += this.step;
    }
    const consumed = Math.max(0, Math.floor(this.at) - this.half);
    this.pending = samples.slice(consumed);
    this.at -= consumed;
    return true;
  }

  push(value) {
    const sample = Math.max(-32768, Math.min(32767, Math.round(value * 32768)));
    this.frame[this.filled++] = linearToUlaw(sample);
    if (this.filled === FRAME_BYTES) {
      this.port.postMessage(this.frame, [this.frame.buffer]);
      this.frame = new Uint8Array(FRAME_BYTES);
      this.filled = 0;
    }
  }
}

registerProcessor("va-phone-capture", PhoneCapture);
