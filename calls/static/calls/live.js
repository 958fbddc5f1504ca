// The staff live page: calls in progress, their transcript as turns complete, and Hang up.
// Everything from the server is shown with textContent: callers can say anything.
"use strict";

(function () {
  const ENDED_KEPT_MS = 120000; // an ended call stays on the page this long
  const state = JSON.parse(document.getElementById("va-live-state").textContent);
  const list = document.getElementById("va-live-calls");
  const empty = document.getElementById("va-live-empty");
  const status = document.getElementById("va-live-status");
  const template = document.getElementById("va-call-template");
  const cards = new Map(); // call_sid -> {root, transcript, button, stateLine, ended}
  let socket = null;
  let retryMs = 1000;

  function offset(ms) {
    if (ms === null || ms === undefined) return "";
    const minutes = Math.floor(ms / 60000);
    const seconds = Math.floor((ms % 60000) / 1000);
    return minutes + ":" + String(seconds).padStart(2, "0") + "." + Math.floor((ms % 1000) / 100);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(kind, text) {
    status.dataset.state = kind;
    status.textContent = text;
  }

  function refreshEmpty() {
    empty.hidden = cards.size > 0;
  }

  function upsertCall(event) {
    let card = cards.get(event.call_sid);
    if (!card) {
      const root = template.content.firstElementChild.cloneNode(true);
      root.dataset.callSid = event.call_sid;
      card = {
        root: root,
        who: root.querySelector(".va-live-who"),
        details: root.querySelector(".va-live-details"),
        stateLine: root.querySelector(".va-live-state"),
        transcript: root.querySelector(".va-live-transcript"),
        button: root.querySelector(".va-hang-up"),
        ended: false,
      };
      card.button.addEventListener("click", function () { hangUp(event.call_sid); });
      cards.set(event.call_sid, card);
      list.appendChild(root);
      refreshEmpty();
    }
    if (event.from !== undefined || event.to !== undefined) {
      card.who.textContent = (event.from || "unknown") + " → " + (event.to || "unknown");
    } else if (!card.who.textContent) {
      card.who.textContent = event.call_sid;
    }
    const details = [event.agent, event.direction, event.call_sid].filter(Boolean);
    if (event.started_at) details.push("started " + new Date(event.started_at).toLocaleTimeString());
    if (event.agent !== undefined) card.details.textContent = details.join(" · ");
    return card;
  }

  function upsertTurn(event) {
    const card = cards.get(event.call_sid) || upsertCall({call_sid: event.call_sid});
    const bubble = element("div", "va-turn " + (event.role === "caller" ? "va-caller" : "va-agent"));
    if (event.kind_of_turn === "dtmf") bubble.classList.add("va-dtmf");
    bubble.dataset.position = event.position;
    const meta = element("div", "va-meta");
    meta.appendChild(element("strong", "", event.role === "caller" ? "Caller" : "Agent"));
    meta.appendChild(document.createTextNode(" " + offset(event.started_ms) + " "));
    if (event.latency_ms !== null && event.latency_ms !== undefined) {
      meta.appendChild(element("span", "va-latency", event.latency_ms + " ms"));
      meta.appendChild(document.createTextNode(" "));
    }
    if (event.interrupted) {
      const heard = event.heard_ms === null || event.heard_ms === undefined
        ? "unknown" : (event.heard_ms / 1000).toFixed(1) + " s";
      meta.appendChild(element("span", "va-interrupted", "interrupted, caller heard " + heard));
    }
    bubble.appendChild(meta);
    bubble.appendChild(element("div", "va-text", event.text || "(no transcript)"));
    // Turns are written as they complete, not always in conversation order: place by position.
    let next = null;
    for (const existing of card.transcript.children) {
      const position = Number(existing.dataset.position);
      if (position === Number(event.position)) {
        existing.replaceWith(bubble);
        return;
      }
      if (next === null && position > Number(event.position)) next = existing;
    }
    card.transcript.insertBefore(bubble, next);
  }

  function endCall(event) {
    const card = cards.get(event.call_sid);
    if (!card || card.ended) return;
    card.ended = true;
    card.root.classList.add("va-ended");
    card.button.hidden = true;
    const reason = state.reasons[event.reason] || event.reason || "ended";
    card.stateLine.textContent = "Call ended: " + reason + (event.error ? " (" + event.error + ")" : "");
    setTimeout(function () {
      card.root.remove();
      cards.delete(event.call_sid);
      refreshEmpty();
    }, ENDED_KEPT_MS);
  }

  function snapshot(calls) {
    const active = new Set(calls.map(function (call) { return call.call_sid; }));
    for (const [sid, card] of cards) {
      // Ended while this page was not listening: the reason is in the call log.
      if (!active.has(sid) && !card.ended) endCall({call_sid: sid, reason: ""});
    }
    for (const call of calls) {
      upsertCall(call);
      for (const turn of call.turns) upsertTurn(turn);
    }
  }

  function hangUp(callSid) {
    const card = cards.get(callSid);
    if (!card || card.ended || !socket || socket.readyState !== WebSocket.OPEN) return;
    if (!window.confirm("Hang up this call now? " + card.who.textContent)) return;
    card.button.disabled = true;
    card.button.textContent = "Hanging up…";
    socket.send(JSON.stringify({action: "hang_up", call_sid: callSid}));
  }

  function onMessage(message) {
    let event;
    try { event = JSON.parse(message.data); } catch (error) { return; }
    if (event.kind === "snapshot") snapshot(event.calls);
    else if (event.kind === "call_started") upsertCall(event);
    else if (event.kind === "turn") upsertTurn(event);
    else if (event.kind === "call_ended") endCall(event);
    else if (event.kind === "hang_up_requested") {
      const card = cards.get(event.call_sid);
      if (card && !card.ended) card.stateLine.textContent = "Hang-up sent…";
    } else if (event.kind === "error") {
      const card = cards.get(event.call_sid);
      if (card && !card.ended) {
        card.button.disabled = false;
        card.button.textContent = "Hang up";
        card.stateLine.textContent = event.message;
      } else {
        setStatus("error", event.message);
      }
    }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + "/ws/live");
    socket.addEventListener("open", function () {
      retryMs = 1000;
      setStatus("open", "Live: updates as calls progress.");
    });
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", function (closed) {
      if (closed.code === 4403) {
        setStatus("forbidden", "Your session has ended or lacks access to calls. Sign in again and reload.");
        return;
      }
      setStatus("closed", "Disconnected. Reconnecting…");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    });
  }

  snapshot(state.calls);
  refreshEmpty();
  connect();
})();
