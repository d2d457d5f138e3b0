// The venue page: every gate's heartbeat as this gate's bus sees it, polled from /api/venue.
"use strict";

function reach(g) {
  // Can this gate reach the platform (a member's probe, the leader's own requests)? "-": it
  // may not lead, so it does not check (agent/ops/heartbeat.py reach_text says the same).
  if (!("platform_checked_by" in g)) return "-";
  const said = g.platform_reachable === null || g.platform_reachable === undefined ? "unknown"
    : g.platform_reachable ? "reachable" : "NOT reachable";
  const how = g.platform_checked_by === "requests" ? "requests" : "probe";
  const when = typeof g.platform_checked_age_s === "number" ? ` (${how} ${age(g.platform_checked_age_s)} ago)` : "";
  return said + when;
}

function gateCard(g) {
  const look = g.state === "online" ? (g.health || "pass") : g.state;
  const admitted = (g.decisions || {}).valid || 0;
  const scans = Object.values(g.decisions || {}).reduce((a, b) => a + b, 0);
  const lanes = (g.lanes || []).map(l => {
    const readers = l.readers || [];
    const up = readers.filter(r => r.connected).length;
    const relay = l.relay ? (l.relay.ok ? "relay ok" : "relay FAULT") : "no relay";
    return el("div", {}, `${l.name} (${l.direction}): readers ${up}/${readers.length}, ${relay}, ` +
              `last scan ${sinceIso(l.last_scan_at)}${l.last_status ? " " + l.last_status : ""}`);
  });
  const queue = g.queue || {};
  const bus = g.bus || {};
  return el("article", {class: `card ${look}`, "data-device": g.device, "data-state": g.state},
    el("h3", {}, el("span", {}, g.device),
       el("span", {class: `badge ${look}`, "data-testid": "state"},
          g.state === "online" ? `online · ${g.health || "?"}` : g.state)),
    definitions([
      ["seen", `${age(g.age_s)} ago`],
      ["scans", el("span", {"data-testid": "scans"}, scans)],
      ["admitted", el("span", {"data-testid": "admitted"}, admitted)],
      ["per min", rates(g.per_min)],
      ["lanes", lanes.length ? lanes : "none"],
      ["to upload", `${queue.pending || 0}` +
        (queue.oldest_pending_age_s ? `, oldest ${age(queue.oldest_pending_age_s)}` : "")],
      ["cache age", age(g.cache_age_s)],
      ["bus", el("span", {"data-testid": "bus"}, busText(bus, bus.lag))],
      ["platform", el("span", {"data-testid": "platform"}, reach(g))],
      ["reasons", (g.reasons || []).length ? (g.reasons || []).map(r => el("div", {}, `${r.level}: ${r.message}`)) : "none"],
      ["version", g.version || "?"],
    ]));
}

function occupancyTable(rows) {
  if (!rows.length) return el("p", {class: "none"}, "no admits yet");
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "zone"), el("th", {}, "inside"),
                       el("th", {}, "capacity"), el("th", {}, ""))),
    el("tbody", {}, rows.map(z => {
      const ratio = z.ratio === null || z.ratio === undefined ? null : z.ratio;
      const width = ratio === null ? 0 : Math.min(100, ratio * 100);
      const level = ratio === null ? "" : ratio >= 1 ? "full" : ratio >= 0.9 ? "high" : "";
      return el("tr", {"data-zone": z.zone_id},
        el("td", {}, z.name), el("td", {"data-testid": "inside"}, z.inside),
        el("td", {}, z.capacity === null ? "no limit" : z.capacity),
        el("td", {}, el("div", {class: "bar"}, el("span", {class: level, style: `width:${width}%`}))));
    })));
}

function cacheTable(gates) {
  // Per event, the freshest cache any online gate has (the leader's, once there is one).
  const best = new Map();
  for (const g of gates) {
    if (g.state === "offline" || g.state === "stopped") continue;
    for (const c of g.cache || []) {
      const seen = best.get(c.id);
      if (!seen || (c.age_s !== null && (seen.age_s === null || c.age_s < seen.age_s))) best.set(c.id, {...c, device: g.device});
    }
  }
  if (!best.size) return el("p", {class: "none"}, "no event cached");
  return el("table", {}, el("tbody", {}, [...best.values()].map(c =>
    el("tr", {}, el("td", {}, c.name || `event ${c.id}`), el("td", {}, `${c.items} items`),
       el("td", {}, `synced ${age(c.age_s)} ago`), el("td", {}, c.device)))));
}

// A leader field of unknown shape (the elected leader's status): text, a number, or an object
// whose first known key is shown (over its second, when given).
function brief(value, keys, over) {
  if (typeof value !== "object" || value === null) return String(value);
  const key = keys.find(k => value[k] !== undefined);
  const of = (over || []).find(k => value[k] !== undefined);
  if (key === undefined) return JSON.stringify(value);
  return of === undefined ? String(value[key]) : `${value[key]} / ${value[of]}`;
}

function render(v) {
  if (!v.venue) {
    document.getElementById("title").textContent = "No venue";
    replace("gates", el("p", {class: "none"}, "this gate has no [venue] section: it works alone"));
    return;
  }
  document.getElementById("title").textContent = `Venue ${v.venue}`;
  document.getElementById("whoami").textContent =
    `seen from ${v.device}, bus ${v.connected ? busText(v) : "NOT connected"}`;
  const t = v.totals;
  replace("totals",
    tile("gates online", `${t.gates.online} / ${v.gates.length}`, "online"),
    tile("stale / offline / stopped", `${t.gates.stale} / ${t.gates.offline} / ${t.gates.stopped}`, "offline"),
    tile("scans per min", rates(t.per_min), "per-min"),
    tile("admitted", (t.decisions || {}).valid || 0, "venue-admitted"),
    tile("conflicts", t.conflicts, "conflicts"),
    tile("decided offline", t.decided_offline, "decided-offline"),
    tile("leader", t.leader ? brief(t.leader, ["device", "name"]) : "no leader", "leader"),
    tile("budget use", t.budget ? brief(t.budget, ["in_use", "used"], ["limit", "per_minute"]) : "—", "budget"),
    tile("upload lag", t.upload_lag_s === null || t.upload_lag_s === undefined ? "—" : age(t.upload_lag_s), "upload-lag"),
    tile("to upload", t.pending, "pending"));
  replace("alarms", v.alarms.length ? v.alarms.map(a =>
    el("li", {class: a.level}, `${a.device}: ${a.message}`)) : el("li", {class: "none"}, "none"));
  replace("gates", v.gates.length ? v.gates.map(gateCard) : el("p", {class: "none"}, "no heartbeat yet"));
  replace("occupancy", occupancyTable(v.occupancy || []));
  replace("caches", cacheTable(v.gates));
}

poll("/api/venue", 1, render);
