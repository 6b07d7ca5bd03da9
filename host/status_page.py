# The status page (host/status.py serves it at /): one HTML file, no build
# step, no external resources. It fetches /status.json every 2 s and builds
# the tables with textContent only: pile-supplied strings (versions, serials,
# event messages) are never parsed as HTML. When the bridge does not answer
# it says so and keeps the last figures on screen, marked stale.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pile-companion site status</title>
<style>
body{font:14px system-ui,sans-serif;margin:1em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.05em;margin:1.2em 0 .3em}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4} .num{text-align:right;font-variant-numeric:tabular-nums}
#conn{padding:2px 8px;border-radius:4px} .ok{background:#d9f2d9} .bad{background:#f8d0d0}
.stale{opacity:.55} .off{color:#999} .warn{color:#a40}
.states span{display:inline-block;margin-right:1.2em}
</style></head>
<body>
<h1>Site <span id="site">?</span> <span id="conn" class="bad">connecting</span></h1>
<div id="summary"></div>
<h2>Bills by custody state</h2>
<div class="states" id="states"></div>
<h2>Piles</h2>
<table id="piles"><thead><tr><th>pile</th><th>online</th><th>trust</th><th>guns</th>
<th class="num">on pile</th><th>versions</th><th>overdue</th><th class="num">frame errors</th></tr></thead>
<tbody></tbody></table>
<h2>Bills not yet settled <span id="listed"></span></h2>
<table id="bills"><thead><tr><th>serial</th><th>pile</th><th>where</th><th class="num">age</th>
<th>OCMF</th></tr></thead>
<tbody></tbody></table>
<h2>Newest bills and their OCMF records</h2>
<table id="recent"><thead><tr><th>serial</th><th>pile</th><th>where</th><th class="num">age</th>
<th>OCMF</th><th></th></tr></thead>
<tbody></tbody></table>
<div id="ocmf-box" hidden><p>OCMF record of <span id="ocmf-serial"></span> (<span id="ocmf-verdict"></span>);
copy it into any OCMF verifier with the pile's public key <span id="ocmf-key" class="off"></span>.
A pile signature is not a calibrated meter's.</p>
<textarea id="ocmf-record" readonly rows="6" style="width:100%;font-family:monospace"></textarea>
<button id="ocmf-copy" type="button">copy</button></div>
<h2>Last events</h2>
<table id="errors"><thead><tr><th>time</th><th>pile</th><th>event</th><th>message</th></tr></thead>
<tbody></tbody></table>
<script>
"use strict";
const STATES = {pile: "on the pile", held: "at the bridge, MAC awaited",
  stored: "in the bridge's store", published: "published, awaiting the platform",
  confirmed: "confirmed, awaiting the pile's settle"};
const OCMF = {verified: "signed, verified", bad_signature: "signed, DOES NOT VERIFY",
  unregistered_key: "signed, key not registered", no_bill: "signed, bill not held"};
function ocmfText(v) { return v ? (OCMF[v] || v) : "unsigned"; }
async function showRecord(serial) {
  const r = await fetch("ocmf/" + encodeURIComponent(serial), {cache: "no-store"});
  const box = document.getElementById("ocmf-box");
  const ta = document.getElementById("ocmf-record");
  document.getElementById("ocmf-serial").textContent = serial;
  if (!r.ok) {
    ta.value = ""; document.getElementById("ocmf-verdict").textContent = "no record yet";
    box.hidden = false; return;
  }
  ta.value = await r.text();
  document.getElementById("ocmf-verdict").textContent = ocmfText(r.headers.get("X-OCMF-Verdict"));
  document.getElementById("ocmf-key").textContent = r.headers.get("X-OCMF-Public-Key") || "(none registered)";
  box.hidden = false; ta.focus(); ta.select();
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(tbody, cells, cls) {
  const tr = el("tr", null, cls);
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  tbody.appendChild(tr);
  return tr;
}
function age(s) {
  if (s === null || s === undefined) return "";
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function guns(g) {
  if (!g) return "";
  return Object.keys(g).sort().map(k => {
    const v = g[k] || {};
    let t = k + ": " + (v.status || "?");
    if (v.status === "charging") {
      t += " " + (v.power_w / 1000).toFixed(1) + " kW";
      if (v.energy_kwh) t += ", " + v.energy_kwh + " kWh";
      if (v.amount_yuan) t += ", " + v.amount_yuan + " yuan";
    }
    return t;
  }).join("; ");
}
function render(s) {
  document.getElementById("site").textContent = s.site;
  const b = s.bridge;
  document.getElementById("summary").textContent =
    "bridge " + b.version + ", up " + age(b.uptime_s) + ", MQTT " +
    (b.mqtt_connected ? "connected" : "NOT connected") + "; oldest unconfirmed bill: " +
    (s.oldest_unconfirmed_s === null ? "none" : age(s.oldest_unconfirmed_s)) +
    "; overdue sessions: " + s.overdue + "; quarantined frames: " + s.quarantined;
  const st = document.getElementById("states");
  st.replaceChildren();
  for (const k of Object.keys(STATES)) {
    const sp = el("span", STATES[k] + ": " + s.bills_by_state[k]);
    sp.dataset.state = k; sp.dataset.count = s.bills_by_state[k];
    st.appendChild(sp);
  }
  const pt = document.querySelector("#piles tbody");
  pt.replaceChildren();
  for (const p of s.piles) {
    const tr = row(pt, [p.pile, p.online ? "online" : ("offline: " + (p.offline_reason || "")),
      p.trust || "", guns(p.guns), (p.journal && p.journal.pending !== undefined) ? p.journal.pending : "",
      p.versions ? [p.versions.sw, p.versions.fw, p.versions.hmi].filter(x => x).join(" / ") : "",
      p.overdue.map(o => o.serial + " (" + age(o.since_s) + ")").join(", "),
      p.frame_errors], p.online ? "" : "off");
    tr.dataset.pile = p.pile;
  }
  const bt = document.querySelector("#bills tbody");
  bt.replaceChildren();
  for (const x of s.bills) {
    const tr = row(bt, [x.serial, x.pile, STATES[x.state] || x.state, age(x.age_s),
      el("td", ocmfText(x.ocmf), x.ocmf && x.ocmf !== "verified" ? "warn" : "")]);
    tr.dataset.serial = x.serial; tr.dataset.state = x.state; tr.dataset.ocmf = x.ocmf || "";
  }
  const rt = document.querySelector("#recent tbody");
  rt.replaceChildren();
  for (const x of s.recent_bills || []) {
    const btn = el("button", "OCMF record");
    btn.type = "button"; btn.disabled = !x.ocmf || x.ocmf === "no_bill";
    btn.addEventListener("click", () => showRecord(x.serial));
    const td = el("td"); td.appendChild(btn);
    const tr = row(rt, [x.serial, x.pile, STATES[x.state] || x.state, age(x.age_s),
      el("td", ocmfText(x.ocmf), x.ocmf && x.ocmf !== "verified" ? "warn" : ""), td]);
    tr.dataset.serial = x.serial; tr.dataset.ocmf = x.ocmf || "";
  }
  document.getElementById("listed").textContent = "(" + s.bills_listed + " listed)";
  const et = document.querySelector("#errors tbody");
  et.replaceChildren();
  for (const e of s.errors) row(et, [e.ts || "", e.pile, e.type, e.message]);
}
async function tick() {
  const conn = document.getElementById("conn");
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    conn.textContent = "live"; conn.className = "ok";
    document.body.classList.remove("stale");
  } catch (e) {
    conn.textContent = "bridge not answering (" + e.message + "): figures below are stale";
    conn.className = "bad";
    document.body.classList.add("stale");
  }
  setTimeout(tick, 2000);
}
document.getElementById("ocmf-copy").addEventListener("click", () => {
  const ta = document.getElementById("ocmf-record");
  ta.select();
  if (navigator.clipboard) navigator.clipboard.writeText(ta.value).catch(() => document.execCommand("copy"));
  else document.execCommand("copy");
});
tick();
</script>
</body></html>
"""
