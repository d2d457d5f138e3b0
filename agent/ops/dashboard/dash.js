// gate-agent dashboard helpers shared by the venue page and the gate page (no libraries).
"use strict";

// An element with text (never HTML: heartbeats come from other devices) and children.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function age(seconds) {
  if (seconds === undefined || seconds === null) return "never";
  const s = Math.max(0, Number(seconds));
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function sinceIso(iso) {
  if (!iso) return "never";
  const t = Date.parse(iso);
  return Number.isNaN(t) ? String(iso) : `${age((Date.now() - t) / 1000)} ago`;
}

function rates(perMin) {
  const parts = Object.entries(perMin || {}).map(([status, n]) => `${status} ${n}`);
  return parts.length ? parts.join(", ") : "0";
}

function tile(label, value, testid) {
  return el("div", {class: "tile"}, el("div", {class: "label"}, label),
            el("div", {class: "value", "data-testid": testid}, value));
}

function definitions(pairs) {
  return el("dl", {}, pairs.filter(p => p).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat(Infinity));
}

// Fetch `url` every `seconds` and hand the JSON to `render`; the header shows the link state.
function poll(url, seconds, render) {
  const live = document.getElementById("live");
  async function once() {
    try {
      const answer = await fetch(url, {credentials: "same-origin", cache: "no-store"});
      if (answer.status === 401) { window.location.href = `/login?next=${window.location.pathname}`; return; }
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      render(await answer.json());
      live.textContent = `updated ${new Date().toLocaleTimeString()}`;
      live.className = "";
    } catch (err) {
      live.textContent = `not updating: ${err.message}`;
      live.className = "down";
    } finally {
      setTimeout(once, seconds * 1000);
    }
  }
  once();
}

function busText(b, lag) {
  // The link to a bus server up is not the session on it set up (`ready`: claims go out, the
  // gate's scans are published): until then the offline policy decides. A heartbeat of an
  // older version has no `ready`: judged by its link, as before.
  if (!b.connected) return "not connected";
  if (b.ready === false) {
    return `link up, session NOT READY (${b.setup_error || b.session_step || "setting up"})`;
  }
  return lag === undefined ? "connected" : `connected, lag ${lag || 0}`;
}
