// This gate's own page (for the technician with a laptop): /status, polled.
"use strict";

// A relay as status judges it (agent.ops.status relay_ok): `ok` false is a fault even with no
// error text (not open); a released lane's relay held open, or not held (release_not_held).
function relayText(r, holdErrors) {
  if (!r) return null;
  const unheld = (holdErrors || {})[r.url];
  if (unheld) return `NOT HELD OPEN: ${unheld}`;
  const ok = r.ok !== undefined ? r.ok : !r.last_error;
  if (!ok) return `FAULT: ${r.last_error || "not open"}`;
  return r.held ? "held open" : "ok";
}

// What the lane's passage input waits for: admits, and technicians' one-person releases.
function passageText(p) {
  const parts = [`${p.waiting || 0} admit(s) waiting`];
  for (const r of p.releases_waiting || []) {
    parts.push(`release by ${r.by} waiting (${(r.directions || []).join("/")}, ${Math.round(r.ends_in_s)} s left)`);
  }
  const down = Object.keys(p.input_errors || {}).concat(
    Object.entries(p.inputs || {}).filter(([, i]) => !i.connected).map(([d]) => d));
  if (down.length) parts.push(`input ${down.join("/")} NOT watched`);
  return parts.join("; ");
}

function laneCard(l) {
  const readers = l.readers || [];
  const up = readers.filter(r => r.connected).length;
  const relays = [l.relay, l.relay_out].filter(r => r);
  const relayFault = relays.some(r => (r.ok !== undefined ? !r.ok : r.last_error) && !(l.hold_errors || {})[r.url]);
  const unheld = Object.keys(l.hold_errors || {}).length > 0;
  const released = (l.released_by || []).length > 0;
  const deaf = readers.length > 0 && up === 0;  // nobody can scan on this lane (no_reader)
  const look = l.journal_error || (l.heartbeat_age_s || 0) > 15 || relayFault || unheld || deaf ? "fail"
    : up < readers.length || released ? "warn" : "pass";
  const total = Object.values(l.decisions_total || {}).reduce((a, b) => a + b, 0);
  const last = l.last_scan || {};
  return el("article", {class: `card ${look}`, "data-lane": l.name},
    el("h3", {}, el("span", {}, l.name), el("span", {class: `badge ${look}`}, l.direction)),
    definitions([
      ["zone", l.zone_id === null || l.zone_id === undefined ? "default" : l.zone_id],
      ["readers", readers.map(r => el("div", {}, `${r.connected ? "✓" : "✗"} ${r.url}${r.last_error ? " — " + r.last_error : ""}`))],
      ["relay", el("span", {"data-testid": "lane-relay"}, l.relay ? relayText(l.relay, l.hold_errors) : "none")],
      l.relay_out ? ["exit relay", relayText(l.relay_out, l.hold_errors)] : null,
      released ? ["released by", el("span", {"data-testid": "lane-released"}, l.released_by.join(", "))] : null,
      l.passage ? ["passage", el("span", {"data-testid": "lane-passage"}, passageText(l.passage))] : null,
      ["scans", el("span", {"data-testid": "lane-scans"}, total)],
      ["by status", rates(l.decisions_total)],
      ["last scan", last.at ? `${sinceIso(last.at)}: ${last.status} (${last.code})` : "none"],
      ["queue", l.queue],
    ]));
}

// HH:MM:SS in this browser's time zone (the technician's, on site); the ISO text if unreadable.
function clockTime(iso) {
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return String(iso);
  return [t.getHours(), t.getMinutes(), t.getSeconds()].map(n => String(n).padStart(2, "0")).join(":");
}

// A venue gate that no longer leads does not measure the platform link (only the leader sends
// it requests): its last error and clock skew are history, so they are shown with the time
// they stopped being measured (`not_measured_since`), as `gate-agent status` does, never as
// the link's state now.
function measured(testid, text, since) {
  return el("span", {"data-testid": testid, title: since ? `not measured since ${since}: this gate no longer leads the venue` : null},
            since ? `${text} (not measured since ${clockTime(since)})` : text);
}

function render(s) {
  document.getElementById("whoami").textContent = `gate-agent ${s.version}, up ${age(s.uptime_s)}`;
  const j = s.journal || {};
  const lanes = s.lanes || [];
  const admitted = lanes.reduce((a, l) => a + ((l.decisions_total || {}).valid || 0), 0);
  replace("totals",
    tile("health", s.health, "health"),
    tile("lanes", lanes.length, "lanes"),
    tile("admitted", admitted, "gate-admitted"),
    tile("to upload", j.pending || 0, "pending"),
    tile("oldest pending", j.oldest_pending ? sinceIso(j.oldest_pending) : "—", "oldest"),
    tile("quarantined", j.quarantined || 0, "quarantined"),
    tile("venue bus", s.venue ? (s.venue.connected ? busText(s.venue, s.venue.lag) : "NOT connected") : "no venue", "bus"));
  replace("alarms", (s.reasons || []).length ? s.reasons.map(r =>
    el("li", {class: r.level}, `${r.code}: ${r.message}`)) : el("li", {class: "none"}, "none: all good"));
  replace("lanes", lanes.length ? lanes.map(laneCard) : el("p", {class: "none"}, "no lane"));
  const p = s.platform || {};
  const events = ((s.cache || {}).events || []).map(e =>
    el("div", {}, `${e.name || "event " + e.id}: ${e.items} items, synced ${sinceIso(e.last_sync)}`));
  const jobs = Object.entries(s.jobs || {}).map(([name, job]) =>
    el("div", {}, `${name}: ${job.failing_since ? "FAILING " + (job.last_error || "") : "ok"}`));
  replace("links",
    el("article", {class: "card"}, el("h3", {}, "Platform"), definitions([
      ["link", p.disabled || measured("platform-link", p.last_error ? `last error: ${p.last_error}` : "ok", p.not_measured_since)],
      ["last success", sinceIso(p.last_success)],
      ["clock skew", measured("clock-skew", p.clock_skew_s === null || p.clock_skew_s === undefined ? "—" : `${p.clock_skew_s} s`, p.not_measured_since)]])),
    el("article", {class: "card"}, el("h3", {}, "Ticket cache"), definitions([["events", events.length ? events : "none"]])),
    el("article", {class: "card"}, el("h3", {}, "Jobs"), definitions([["jobs", jobs.length ? jobs : "none"]])));
}

poll("/status", 2, render);
