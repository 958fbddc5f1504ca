// The web phone: the browser plays Twilio's part of a Media Stream over /ws/phone. The
// microphone goes through phone-worklet.js (8 kHz mu-law, 20 ms frames); the agent's audio
// is decoded and scheduled on the AudioContext clock; marks are echoed once the audio sent
// before them has played, and a clear stops playback at once and echoes the pending marks,
// as Twilio does. The transcript comes from the live page's socket (/ws/live).
// window.vaPhone.stats counts what went each way (the browser tests read it).
"use strict";

(function () {
  const root = document.querySelector(".va-phone");
  const agentSelect = document.getElementById("va-phone-agent");
  const callButton = document.getElementById("va-phone-call");
  const hangUpButton = document.getElementById("va-phone-hang-up");
  const status = document.getElementById("va-phone-status");
  const transcript = document.getElementById("va-phone-transcript");
  if (!callButton) return; // no enabled agent

  const LINE_RATE = 8000;
  const FRAME_MS = 20;
  const PLAYOUT_LEAD_S = 0.04; // scheduling slack for the first chunk after a gap
  const TICK_MS = 10;
  const STOP_GRACE_MS = 5000; // after "stop", the server closes once the call is stored
  const LIVE_GRACE_MS = 3000;
  const CLOSE_MESSAGES = {
    1000: "Call ended.",
    4403: "The server refused this call.",
    4404: "This agent does not exist, is disabled, or all lines are busy.",
    4408: "The call did not start in time.",
    4500: "The call failed: see its error in the call log.",
  };

  // G.711 mu-law to float, the inverse of the worklet's encoder.
  const ULAW = new Float32Array(256);
  for (let byte = 0; byte < 256; byte++) {
    const u = ~byte & 0xff;
    const magnitude = (((u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    ULAW[byte] = (u & 0x80 ? 0x84 - magnitude : magnitude - 0x84) / 32768;
  }

  const stats = {
    framesSent: 0,
    bytesSent: 0,
    bytesReceived: 0,
    bytesPlayed: 0,
    marksReceived: 0,
    marksEchoed: 0,
    clears: 0,
    closeCode: null,
  };
  window.vaPhone = {stats: stats};

  let call = null; // the call in progress: its socket, audio graph and playback state

  function setStatus(state, text) {
    status.dataset.state = state;
    status.textContent = text;
  }

  function base64Of(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text);
  }

  function bytesOf(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  function send(message) {
    if (call && call.socket.readyState === WebSocket.OPEN) {
      call.socket.send(JSON.stringify(message));
    }
  }

  function nextSequence() {
    call.sequence += 1;
    return String(call.sequence);
  }

  // --- Twilio's side of the protocol -------------------------------------------------------

  function onAssigned(message) {
    call.callSid = message.callSid;
    call.streamSid = message.streamSid;
    send({event: "connected", protocol: "Call", version: "1.0.0"});
    send({
      event: "start",
      sequenceNumber: nextSequence(),
      start: {
        accountSid: "",
        streamSid: call.streamSid,
        callSid: call.callSid,
        tracks: ["inbound"],
        customParameters: {agent: call.agentId},
        mediaFormat: {encoding: "audio/x-mulaw", sampleRate: LINE_RATE, channels: 1},
      },
      streamSid: call.streamSid,
    });
    call.streaming = true;
    hangUpButton.hidden = false;
    setStatus("in-call", "In call with " + call.agentName + ".");
    watchTranscript();
  }

  function sendFrame(frame) {
    if (!call || !call.streaming) return; // before start or after stop: not part of the call
    call.chunk += 1;
    send({
      event: "media",
      sequenceNumber: nextSequence(),
      media: {
        track: "inbound",
        chunk: String(call.chunk),
        timestamp: String((call.chunk - 1) * FRAME_MS),
        payload: base64Of(frame),
      },
      streamSid: call.streamSid,
    });
    stats.framesSent += 1;
    stats.bytesSent += frame.length;
  }

  function echoMark(name) {
    send({event: "mark", sequenceNumber: nextSequence(), streamSid: call.streamSid, mark: {name: name}});
    stats.marksEchoed += 1;
  }

  function play(payload) {
    const bytes = bytesOf(payload);
    stats.bytesReceived += bytes.length;
    const context = call.audio;
    const buffer = context.createBuffer(1, bytes.length, LINE_RATE);
    const samples = buffer.getChannelData(0);
    for (let i = 0; i < bytes.length; i++) samples[i] = ULAW[bytes[i]];
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    const at = Math.max(call.playEnd, context.currentTime + PLAYOUT_LEAD_S);
    source.start(at);
    call.playEnd = at + buffer.duration;
    call.scheduled.push({source: source, end: call.playEnd, bytes: bytes.length});
  }

  function onMark(name) {
    stats.marksReceived += 1;
    // Twilio echoes a mark when the audio sent before it has played.
    call.marks.push({name: name, at: call.playEnd});
    tick();
  }

  function clearPlayback() {
    stats.clears += 1;
    for (const chunk of call.scheduled) {
      try { chunk.source.stop(); } catch (error) { /* not started yet: nothing to stop */ }
    }
    call.scheduled = [];
    call.playEnd = 0;
    const pending = call.marks;
    call.marks = [];
    for (const mark of pending) echoMark(mark.name);
  }

  function tick() {
    if (!call) return;
    const now = call.audio.currentTime;
    while (call.scheduled.length && call.scheduled[0].end <= now) {
      stats.bytesPlayed += call.scheduled.shift().bytes;
    }
    while (call.marks.length && call.marks[0].at <= now) echoMark(call.marks.shift().name);
  }

  function onMessage(event) {
    if (!call || event.target !== call.socket) return;
    let message;
    try { message = JSON.parse(event.data); } catch (error) { return; }
    if (message.event === "assigned") onAssigned(message);
    else if (message.event === "ended") call.ended = message;
    else if (message.event === "media" && message.media) play(message.media.payload);
    else if (message.event === "mark" && message.mark) onMark(message.mark.name);
    else if (message.event === "clear") clearPlayback();
  }

  // --- the call ------------------------------------------------------------------------

  async function startCall() {
    callButton.disabled = true;
    agentSelect.disabled = true;
    transcript.replaceChildren();
    const option = agentSelect.options[agentSelect.selectedIndex];
    setStatus("connecting", "Asking for the microphone…");
    // Created in the click handler, so that the browser lets it play.
    const audio = new AudioContext();
    call = {
      audio: audio,
      agentId: option.value,
      agentName: option.textContent,
      socket: null,
      microphone: null,
      callSid: "",
      streamSid: "",
      sequence: 0,
      chunk: 0,
      streaming: false,
      playEnd: 0,
      scheduled: [],
      marks: [],
      ticker: null,
      live: null,
      stopTimer: null,
      ended: null, // the server's "ended": why the call ended, and its error
    };
    const current = call;
    if (!navigator.mediaDevices) {
      endCall(current, "error", "Browsers allow the microphone on HTTPS pages and on localhost only.");
      return;
    }
    try {
      await audio.resume();
      current.microphone = await navigator.mediaDevices.getUserMedia({
        audio: {channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true},
      });
      await audio.audioWorklet.addModule(root.dataset.worklet);
    } catch (error) {
      endCall(current, "error", "No microphone: " + error.message);
      return;
    }
    if (call !== current) return;
    const capture = new AudioWorkletNode(audio, "va-phone-capture");
    capture.port.onmessage = function (event) { sendFrame(event.data); };
    audio.createMediaStreamSource(current.microphone).connect(capture);
    capture.connect(audio.destination); // outputs silence; connected so that it is processed
    current.ticker = setInterval(tick, TICK_MS);
    setStatus("connecting", "Connecting…");
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    current.socket = new WebSocket(scheme + window.location.host + "/ws/phone");
    current.socket.addEventListener("message", onMessage);
    current.socket.addEventListener("close", function (closed) {
      stats.closeCode = closed.code;
      const error = current.ended && current.ended.error;
      const text = (closed.code === 4500 && error ? "The call failed: " + error + "." : CLOSE_MESSAGES[closed.code])
        || (current.callSid ? "The connection was lost." : "Could not connect: sign in again and reload.");
      endCall(current, closed.code === 1000 ? "idle" : "error", text);
    });
  }

  function hangUp() {
    if (!call || !call.streaming) return;
    call.streaming = false;
    send({
      event: "stop",
      sequenceNumber: nextSequence(),
      streamSid: call.streamSid,
      stop: {accountSid: "", callSid: call.callSid},
    });
    hangUpButton.disabled = true;
    setStatus("connecting", "Hanging up…");
    const current = call;
    current.stopTimer = setTimeout(function () { current.socket.close(); }, STOP_GRACE_MS);
  }

  function endCall(ended, state, text) {
    if (call !== ended) return;
    call = null;
    clearInterval(ended.ticker);
    clearTimeout(ended.stopTimer);
    if (ended.microphone) ended.microphone.getTracks().forEach(function (track) { track.stop(); });
    ended.audio.close();
    // The last turns are published as the call is stored, just before the socket closes.
    if (ended.live) setTimeout(function () { ended.live.close(); }, LIVE_GRACE_MS);
    callButton.disabled = false;
    agentSelect.disabled = false;
    hangUpButton.hidden = true;
    hangUpButton.disabled = false;
    setStatus(state, text);
    if (ended.callSid) {
      const link = document.createElement("a");
      link.href = root.dataset.callsUrl + "?q=" + encodeURIComponent(ended.callSid);
      link.textContent = "See it in the call log";
      status.append(" ", link);
    }
  }

  // --- the transcript, from the live page's events ----------------------------------------

  function showTurn(turn) {
    const bubble = document.createElement("div");
    bubble.className = "va-turn " + (turn.role === "caller" ? "va-caller" : "va-agent");
    bubble.dataset.position = turn.position;
    const meta = document.createElement("div");
    meta.className = "va-meta";
    meta.textContent = turn.role === "caller" ? "You" : "Agent";
    if (turn.interrupted) {
      const heard = turn.heard_ms === null || turn.heard_ms === undefined
        ? "" : ", you heard " + (turn.heard_ms / 1000).toFixed(1) + " s";
      meta.textContent += " (interrupted" + heard + ")";
    }
    const text = document.createElement("div");
    text.className = "va-text";
    text.textContent = turn.text || "(no transcript)";
    bubble.append(meta, text);
    let next = null;
    for (const existing of transcript.children) {
      if (Number(existing.dataset.position) === Number(turn.position)) {
        existing.replaceWith(bubble);
        return;
      }
      if (next === null && Number(existing.dataset.position) > Number(turn.position)) next = existing;
    }
    transcript.insertBefore(bubble, next);
  }

  function watchTranscript() {
    const current = call;
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    current.live = new WebSocket(scheme + window.location.host + "/ws/live");
    current.live.addEventListener("message", function (event) {
      if (call && call !== current) return; // a newer call owns the transcript now
      let message;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      if (message.kind === "snapshot") {
        for (const listed of message.calls) {
          if (listed.call_sid === current.callSid) listed.turns.forEach(showTurn);
        }
      } else if (message.kind === "turn" && message.call_sid === current.callSid) {
        showTurn(message);
      }
    });
  }

  callButton.addEventListener("click", startCall);
  hangUpButton.addEventListener("click", hangUp);
  window.addEventListener("pagehide", hangUp);
})();
