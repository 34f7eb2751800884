// Steelyard dashboard. Reads /api/v1/events (server-sent events over fetch, so the bearer token can go in
// a header), keeps a few minutes of per-endpoint request counts, and draws each upstream's traffic share.
// DOM nodes are built once per endpoint set and updated in place, so buttons and inputs survive updates.
"use strict";

const HISTORY_SECONDS = 300;
const COLORS = ["#3b6fd8", "#e07b24", "#2e9e5b", "#c23b75", "#8a5cd1", "#1b9aaa", "#b59b14", "#6b7385"];
const $ = (sel) => document.querySelector(sel);

let token = sessionStorage.getItem("steelyard-token") || "";
const history = new Map();   // upstream key -> {times: [ms], series: Map(endpoint -> [requests per interval])}
const lastCount = new Map(); // "upstream|endpoint" -> requests counter at the previous event
let lastTime = null;
let layoutKey = "";
let lostConnection = false;

function headers(json) {
  const h = {};
  if (token) h["Authorization"] = "Bearer " + token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fmt(v, digits = 1) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function showError(text) {
  const e = $("#error");
  e.hidden = !text;
  e.textContent = text || "";
}

function needToken() {
  $("#token-form").hidden = false;
  showError("The admin API answered 401: enter its token.");
}

// -- operations -----------------------------------------------------------------------------------------

async function operate(upstream, endpoint, op, body) {
  const url = `/api/v1/endpoints/${upstream}/${encodeURIComponent(endpoint)}/${op}`;
  const resp = await fetch(url, {method: "POST", headers: headers(true), body: JSON.stringify(body || {})});
  if (resp.status === 401) return needToken();
  const doc = await resp.json();
  showError(resp.ok ? "" : `${op} ${endpoint}: ${doc.error}`);
}

async function explain(upstream, out) {
  const resp = await fetch(`/api/v1/explain?lb=${encodeURIComponent(upstream)}`, {headers: headers(false)});
  if (resp.status === 401) return needToken();
  const doc = await resp.json();
  const up = (doc.upstreams || [])[0] || {};
  out.textContent = resp.ok ? `next pick: ${up.next_pick ?? "none"} — ${up.reason ?? ""}` : doc.error;
}

// -- layout (rebuilt only when load balancers or endpoints change) ---------------------------------------

function buildLayout(state) {
  const main = $("#lbs");
  main.replaceChildren();
  for (const lb of state.load_balancers) {
    const card = el("div", {class: "lb", dataset: {lb: lb.name}}, el("h2", {}, lb.name));
    for (const up of lb.upstreams) {
      const tbody = el("tbody");
      for (const ep of up.endpoints) {
        const weightInput = el("input", {type: "number", min: "0", max: "1000", class: "weight-input",
                                         value: ep.override_weight ?? ep.configured_weight});
        const row = el("tr", {dataset: {endpoint: ep.id, upstream: up.key}},
          el("td", {}, ep.name && ep.name !== ep.id ? `${ep.name} (${ep.id})` : ep.id),
          el("td", {}, el("span", {class: "health"})),
          el("td", {class: "num weights"}),
          el("td", {class: "num in-flight"}),
          el("td", {class: "num rps"}),
          el("td", {class: "num p50"}),
          el("td", {class: "num p99"}),
          el("td", {class: "num requests"}),
          el("td", {class: "num ejections"}),
          el("td", {},
            el("button", {class: "drain", onclick: (ev) => {
              const drained = ev.target.dataset.drained === "true";
              operate(up.key, ep.id, drained ? "undrain" : "drain");
            }}, "drain"), " ",
            weightInput,
            el("button", {class: "set-weight", onclick: () => {
              const v = weightInput.value.trim();
              operate(up.key, ep.id, "weight", {weight: v === "" ? null : Number(v)});
            }}, "set weight")));
        tbody.append(row);
      }
      const table = el("table", {},
        el("thead", {}, el("tr", {},
          ...["endpoint", "health"].map((h) => el("th", {}, h)),
          ...["weight (eff/conf)", "in-flight", "req/s", "p50 ms", "p99 ms", "requests", "ejections"]
            .map((h) => el("th", {class: "num"}, h)),
          el("th", {}, "operations"))),
        tbody);
      const out = el("div", {class: "explain muted"});
      const canvas = el("canvas", {class: "chart", dataset: {upstream: up.key}});
      const legend = el("div", {class: "legend"});
      up.endpoints.forEach((ep, i) => legend.append(
        el("span", {}, el("i", {style: `background:${COLORS[i % COLORS.length]}`}), ep.name || ep.id)));
      card.append(el("div", {class: "upstream", dataset: {upstream: up.key}},
        el("div", {},
          el("div", {class: "meta"},
            el("b", {}, `port ${up.port} (${up.protocol})`), " · strategy ",
            el("b", {class: "strategy"}, up.strategy),
            up.policy_name ? ` · policy ${up.policy_name}` : "",
            " · ", up.listeners.join(", "), " · ",
            el("span", {class: "upstream-rps"}), " · ",
            el("button", {onclick: () => explain(up.key, out)}, "explain next pick")),
          table, out),
        el("div", {}, el("div", {class: "muted chart-title"}, "share of requests"), canvas, legend)));
    }
    main.append(card);
  }
}

// -- updates -------------------------------------------------------------------------------------------

function update(state) {
  const key = JSON.stringify(state.load_balancers.map((lb) =>
    lb.upstreams.map((u) => [u.key, u.strategy, u.endpoints.map((e) => e.id)])));
  if (key !== layoutKey) {
    layoutKey = key;
    buildLayout(state);
  }
  const ready = $("#ready");
  ready.textContent = state.ready ? "ready" : `not ready: ${state.not_ready_reason}`;
  ready.className = "badge " + (state.ready ? "ok" : "bad");
  $("#source").textContent = state.config.source ? `config: ${state.config.source}` : "no configuration";
  const c = state.counters;
  $("#totals").textContent = `${c.requests} requests · ${c.retries} retries · ` +
    `${c.downstream_active + c.downstream_idle} client connections`;
  $("#live").textContent = "updated " + new Date(state.time * 1000).toLocaleTimeString();

  const now = Date.now();
  for (const lb of state.load_balancers) {
    for (const up of lb.upstreams) {
      const box = document.querySelector(`.upstream[data-upstream="${CSS.escape(up.key)}"]`);
      box.querySelector(".upstream-rps").textContent = `${fmt(up.requests_per_second)} req/s`;
      box.querySelector(".strategy").textContent = up.strategy;
      let h = history.get(up.key);
      if (!h) history.set(up.key, h = {times: [], series: new Map()});
      const fresh = lastTime !== null;
      if (fresh) h.times.push(now);
      for (const ep of up.endpoints) {
        const row = box.querySelector(`tr[data-endpoint="${CSS.escape(ep.id)}"]`);
        const health = row.querySelector(".health");
        health.textContent = ep.health;
        health.className = "health " + ep.health;
        row.querySelector(".weights").textContent = `${fmt(ep.effective_weight, 1)} / ${ep.configured_weight}` +
          (ep.override_weight !== null ? ` (set ${ep.override_weight})` : "");
        row.querySelector(".in-flight").textContent = ep.in_flight;
        row.querySelector(".rps").textContent = fmt(ep.requests_per_second);
        row.querySelector(".p50").textContent = fmt(ep.p50_ms, 2);
        row.querySelector(".p99").textContent = fmt(ep.p99_ms, 2);
        row.querySelector(".requests").textContent = ep.requests;
        row.querySelector(".ejections").textContent = ep.ejections;
        const drain = row.querySelector(".drain");
        drain.textContent = ep.drained ? "undrain" : "drain";
        drain.dataset.drained = String(ep.drained);
        const id = `${up.key}|${ep.id}`;
        if (fresh) {
          let s = h.series.get(ep.id);
          if (!s) h.series.set(ep.id, s = new Array(h.times.length - 1).fill(0));
          s.push(Math.max(0, ep.requests - (lastCount.get(id) ?? ep.requests)));
        }
        lastCount.set(id, ep.requests);
      }
      while (h.times.length && now - h.times[0] > HISTORY_SECONDS * 1000) {
        h.times.shift();
        for (const s of h.series.values()) s.shift();
      }
      draw(box.querySelector("canvas"), h, up.endpoints.map((e) => e.id));
    }
  }
  lastTime = now;
  renderReloads(state.reloads);
}

function renderReloads(reloads) {
  const tbody = $("#reloads tbody");
  tbody.replaceChildren(...reloads.map((r) => el("tr", {},
    el("td", {}, new Date(r.at * 1000).toLocaleString()),
    el("td", {}, el("span", {class: "badge " + (r.ok ? "ok" : "bad")}, r.ok ? "ok" : "failed")),
    el("td", {}, r.source),
    el("td", {}, [r.message, ...r.errors].filter(Boolean).join("; ")))));
}

// Stacked areas: at each interval, each endpoint's fraction of the upstream's requests (0..1).
function draw(canvas, h, order) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, ht = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = ht * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, ht);
  g.strokeStyle = "#dde1ea";
  for (const f of [0.25, 0.5, 0.75]) {
    g.beginPath(); g.moveTo(0, ht * f); g.lineTo(w, ht * f); g.stroke();
  }
  const n = h.times.length;
  if (n < 2) return;
  // The x axis spans the history we have (at least 10 s, at most HISTORY_SECONDS), newest on the right.
  const now = h.times[n - 1];
  const span = Math.min(HISTORY_SECONDS * 1000, Math.max(10_000, now - h.times[0]));
  const x = (t) => w - ((now - t) / span) * w;
  const title = canvas.parentElement.querySelector(".chart-title");
  if (title) title.textContent = `share of requests per endpoint, last ${Math.round(span / 1000)} s`;
  const totals = h.times.map((_, i) => order.reduce((a, id) => a + ((h.series.get(id) || [])[i] || 0), 0));
  const base = new Array(n).fill(0);
  order.forEach((id, k) => {
    const s = h.series.get(id) || [];
    const top = base.map((b, i) => b + (totals[i] ? (s[i] || 0) / totals[i] : 0));
    g.beginPath();
    for (let i = 0; i < n; i++) g.lineTo(x(h.times[i]), ht - top[i] * ht);
    for (let i = n - 1; i >= 0; i--) g.lineTo(x(h.times[i]), ht - base[i] * ht);
    g.closePath();
    g.fillStyle = COLORS[k % COLORS.length];
    g.fill();
    for (let i = 0; i < n; i++) base[i] = top[i];
  });
}

// -- the event stream ------------------------------------------------------------------------------------

// The minutes before the page opened, from the server's own samples.
async function seedHistory() {
  const resp = await fetch("/api/v1/history", {headers: headers(false)});
  if (!resp.ok) return;
  const doc = await resp.json();
  const now = Date.now();
  for (const [key, h] of Object.entries(doc.upstreams)) {
    history.set(key, {times: h.ago.map((a) => now - a * 1000),
                      series: new Map(Object.entries(h.endpoints).map(([id, s]) => [id, s.slice()]))});
  }
}

async function stream() {
  await seedHistory().catch(() => {});
  for (;;) {
    try {
      const resp = await fetch("/api/v1/events", {headers: headers(false)});
      if (resp.status === 401) { needToken(); return; }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) {
            update(JSON.parse(data));
            if (lostConnection) { lostConnection = false; showError(""); }
          }
        }
      }
    } catch (err) {
      lostConnection = true;
      showError("lost the connection to the admin API, retrying…");
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("#token").value;
  sessionStorage.setItem("steelyard-token", token);
  $("#token-form").hidden = true;
  showError("");
  stream();
});

stream();
