// isopool dashboard: polls /api/snapshot and draws it.
// Everything from Redis is text: the DOM is built with createElement and textContent
// only (never innerHTML), so a job named "<script>" shows as those characters.
// Actions send the token the user typed in the X-Isopool-Token header of a POST; no
// cookie is ever used.
"use strict";

const POLL_MS = 1500;
const SVG = "http://www.w3.org/2000/svg";
const ONLY = new URLSearchParams(location.search).get("queue");  // ?queue=NAME: one queue
const SNAPSHOT = "/api/snapshot" + (ONLY === null ? "" : "?queue=" + encodeURIComponent(ONLY));
let token = sessionStorage.getItem("isopool-token") || "";
let readOnly = true;
let lastAccess = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "onclick") node.addEventListener("click", value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 60) return value.toFixed(1) + " s";
  if (value < 3600) return Math.floor(value / 60) + " min " + Math.floor(value % 60) + " s";
  return (value / 3600).toFixed(1) + " h";
}

function clock(unix) {
  if (unix === null || unix === undefined) return "never";
  return new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function say(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = text ? (isError ? "show error" : "show") : "";
}

async function act(url, label) {
  try {
    const reply = await fetch(url, {
      method: "POST",
      headers: { "X-Isopool-Token": token },
      credentials: "omit",
      cache: "no-store",
    });
    const body = await reply.json().catch(() => ({}));
    if (reply.ok) say(body.message || label + ": done", false);
    else say(label + " refused (" + reply.status + "): " + (body.error || reply.statusText), true);
  } catch (err) {
    say(label + " failed: " + err, true);
  }
  poll();
}

function actionButton(label, url, dataAction) {
  return el("button", {
    "data-action": dataAction,
    title: readOnly ? "read-only dashboard" : label,
    onclick: () => act(url, label),
  }, label);
}

function drawAccess() {
  const state = readOnly ? "ro" : token ? "token:" + token.length : "locked";
  if (state === lastAccess) return;
  lastAccess = state;
  const box = document.getElementById("access");
  if (readOnly) {
    box.replaceChildren(el("span", { class: "badge", id: "mode" },
      "read-only: started without --token, actions disabled"));
    return;
  }
  const input = el("input", { type: "password", id: "token", placeholder: "token for actions",
    autocomplete: "off" });
  input.value = token;
  const use = el("button", { id: "use-token", onclick: () => {
    token = input.value;
    sessionStorage.setItem("isopool-token", token);
    lastAccess = null;
    drawAccess();
  } }, "Use token");
  box.replaceChildren(input, use, el("span", { class: token ? "badge on" : "badge", id: "mode" },
    token ? "actions on" : "actions need the token"));
}

function countBox(kind, label, value) {
  return el("div", { class: "count " + kind },
    el("b", { "data-count": kind }, value), el("span", {}, label));
}

function chart(rows) {
  const width = 600, height = 120, left = 28, bottom = 18;
  const max = Math.max(1, ...rows.map((r) => r.done + r.failed + r.dead));
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: "none", role: "img", "aria-label": "jobs finished per minute" });
  const plot = height - bottom;
  root.append(svg("line", { x1: left, x2: width, y1: plot, y2: plot }));
  root.append(svg("text", { x: 0, y: 10 }, max));
  root.append(svg("text", { x: 0, y: plot }, 0));
  const step = (width - left) / rows.length;
  rows.forEach((row, i) => {
    let y = plot;
    for (const kind of ["done", "failed", "dead"]) {
      const h = (row[kind] / max) * (plot - 4);
      if (h > 0) {
        y -= h;
        root.append(svg("rect", { class: kind, x: left + i * step + 2, y, width: step - 4,
          height: h }, undefined));
      }
    }
    if (i % 3 === rows.length % 3 || i === rows.length - 1) {
      const t = new Date(row.minute * 1000).toISOString().slice(11, 16);
      root.append(svg("text", { x: left + i * step + 2, y: height - 4 }, t));
    }
  });
  return root;
}

function table(headers, rows, emptyText) {
  if (!rows.length) return el("p", { class: "empty" }, emptyText);
  return el("table", {},
    el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

function queueCard(q) {
  const base = "/api/queues/" + encodeURIComponent(q.name);
  const done = q.throughput.reduce((n, r) => n + r.done, 0);
  const failed = q.throughput.reduce((n, r) => n + r.failed + r.dead, 0);
  const t = q.totals;
  const bands = q.bands.filter((b) => b.queued || b.running);
  const card = el("section", { class: "queue", "data-queue": q.name },
    el("h2", {}, "Queue ", el("span", { class: "mono qname" }, q.name),
      q.exists ? null : el("span", { class: "deadtext" }, "  (epoch missing: state lost)")),
    el("div", { class: "counts" },
      countBox("queued", "queued", t.queued), countBox("running", "running", t.running),
      countBox("scheduled", "scheduled", t.scheduled), countBox("delayed", "retry wait", t.delayed),
      countBox("dead", "dead", t.dead), countBox("done", "done, 15 min", done),
      countBox("failed", "failed, 15 min", failed)));
  card.append(el("div", { class: "grid" },
    el("div", {},
      el("h3", {}, "Finished per minute"), chart(q.throughput),
      el("div", { class: "legend" }, el("span", {}, el("i", { class: "done" }), "done"),
        el("span", {}, el("i", { class: "failed" }), "failed"),
        el("span", {}, el("i", { class: "dead" }), "dead"))),
    el("div", {},
      el("h3", {}, "Bands"),
      table(["band", "queued", "running"], bands.map((b) => el("tr", {},
        el("td", { class: "num" }, b.band), el("td", { class: "num" }, b.queued),
        el("td", { class: "num" }, b.running))), "no job waiting or running"))));
  card.append(el("h3", {}, "Running"), table(
    ["job", "function", "worker", "age", "lease idle", "tries", "size", ""],
    q.running.map((j) => el("tr", { "data-job": j.id },
      el("td", { class: "mono" }, j.id.slice(0, 12)), el("td", { class: "mono" }, j.function),
      el("td", { class: "mono" }, j.worker), el("td", { class: "num" }, seconds(j.age)),
      el("td", { class: "num" }, seconds(j.lease_idle)), el("td", { class: "num" }, j.attempts),
      el("td", { class: "num" }, j.size + " B"),
      el("td", {}, j.cancelling ? "cancelling…" :
        actionButton("cancel", base + "/jobs/" + encodeURIComponent(j.id) + "/cancel", "cancel")))),
    "nothing running"));
  card.append(el("h3", {}, "Dead letters"), table(
    ["job", "function", "reason", "at", "now", ""],
    q.dead.map((d) => el("tr", { "data-dead": d.id },
      el("td", { class: "mono" }, d.id.slice(0, 12)), el("td", { class: "mono fn" }, d.function),
      el("td", { class: "reason" }, d.reason), el("td", {}, clock(d.at)), el("td", {}, d.status),
      el("td", {},
        actionButton("requeue", base + "/dead/" + encodeURIComponent(d.entry) + "/requeue",
          "requeue"), " ",
        actionButton("delete", base + "/dead/" + encodeURIComponent(d.entry) + "/delete",
          "delete")))),
    "no dead letters"));
  card.append(el("div", { class: "grid" },
    el("div", {}, el("h3", {}, "Schedules"), table(["name", "cron", "function", "next run"],
      q.schedules.map((s) => el("tr", {},
        el("td", { class: "mono" }, s.name), el("td", { class: "mono" }, s.cron + " " + s.zone),
        el("td", { class: "mono" }, s.function),
        el("td", {}, clock(s.next_run) + (s.due ? " (due)" : "")))), "no schedules")),
    el("div", {}, el("h3", {}, "Workers"), table(["worker", "host", "pid", "held", "processes", "heartbeat"],
      q.workers.map((w) => el("tr", {},
        el("td", { class: "mono" }, w.name), el("td", {}, w.host), el("td", { class: "num" }, w.pid),
        el("td", { class: "num" }, w.held + "/" + w.capacity), el("td", { class: "num" }, w.processes),
        el("td", { class: w.alive ? "alive" : "deadtext" },
          (w.alive ? "alive, " : "DEAD, ") + seconds(w.last_beat) + " ago"))),
      "no worker has reported"))));
  return card;
}

function nodesTable(nodes) {
  return table(["node", "host", "pid", "version", "supervisors", "heartbeat"],
    nodes.map((n) => el("tr", {},
      el("td", { class: "mono" }, n.name), el("td", {}, n.host), el("td", { class: "num" }, n.pid),
      el("td", {}, n.version), el("td", { class: "mono" }, n.supervisors.join(", ")),
      el("td", { class: n.alive ? "alive" : "deadtext" },
        n.alive ? "alive (lapses in " + seconds(n.heartbeat_ttl) + ")" : "DOWN"))),
    "no node registered");
}

async function poll() {
  try {
    const reply = await fetch(SNAPSHOT, { cache: "no-store", credentials: "omit" });
    const data = await reply.json().catch(() => ({}));
    if (!reply.ok) throw new Error(data.error || "HTTP " + reply.status);
    readOnly = data.read_only;
    drawAccess();
    document.getElementById("queues").replaceChildren(
      ...(data.queues.length ? data.queues.map(queueCard)
        : [el("p", { class: "empty" }, "no queue in this Redis yet")]));
    document.getElementById("nodes").replaceChildren(nodesTable(data.nodes));
    document.getElementById("updated").textContent = "updated " + clock(data.at);
  } catch (err) {
    document.getElementById("updated").textContent = "cannot reach the dashboard: " + err;
  }
}

function loop() {
  poll().finally(() => setTimeout(loop, POLL_MS));
}

document.addEventListener("DOMContentLoaded", loop);
