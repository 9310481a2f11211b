// The operators' dashboard: polls /api/dashboard and renders it. Every value is set with
// textContent (never as markup): conversation names, actions and audit details come from
// chat users and agents.
"use strict";

const REFRESH_MS = 2000;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows, empty) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = row([empty]);
    tr.firstChild.colSpan = document.querySelectorAll("#" + tableId + " thead th").length;
    tr.className = "muted";
    body.appendChild(tr);
  }
  for (const r of rows) body.appendChild(r);
}

function when(unix) {
  return new Date(unix * 1000).toLocaleString();
}

function duration(secs) {
  if (secs < 60) return secs + " s";
  if (secs < 3600) return Math.floor(secs / 60) + " min";
  return (secs / 3600).toFixed(1) + " h";
}

function mib(bytes) {
  return (bytes / 1048576).toFixed(1) + " MiB";
}

async function decide(id, approve) {
  const out = document.getElementById("decision-result");
  out.hidden = false;
  try {
    const r = await fetch("/api/dashboard/decisions", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ approval: id, approve: approve }),
    });
    const text = r.ok ? (await r.json()).outcome : (await r.text()).trim();
    out.textContent = "Approval " + id + ": " + text;
  } catch (e) {
    out.textContent = "Approval " + id + ": " + e;
  }
  refresh();
}

function render(d) {
  const g = d.gateway;
  const dl = document.getElementById("gateway");
  dl.replaceChildren();
  for (const [k, v] of [
    ["Version", g.version], ["Uptime", duration(g.uptime_secs)], ["Sandbox backend", g.sandbox],
    ["Store", g.store], ["Active conversations", g.conversations_active],
    ["Running sandboxes", g.sandboxes_running], ["Pending approvals", g.approvals_pending],
  ]) {
    dl.appendChild(el("dt", k));
    dl.appendChild(el("dd", v));
  }

  fill("channels", d.channels.map((c) => {
    const r = row([c.platform, c.state, c.detail]);
    r.className = c.healthy ? "ok" : "bad";
    return r;
  }), "no channels");

  fill("approvals", d.approvals.map((a) => {
    const buttons = el("span");
    const yes = el("button", "Approve", "approve");
    yes.addEventListener("click", () => decide(a.approval, true));
    const no = el("button", "Deny", "deny");
    no.addEventListener("click", () => decide(a.approval, false));
    buttons.append(yes, no);
    const r = row([a.approval, a.conversation, a.requester, el("pre", a.action, "action"), when(a.expires_at), buttons]);
    r.dataset.approval = a.approval;
    return r;
  }), "none");

  fill("conversations", d.conversations.map((c) => {
    const s = c.sandbox;
    const u = s && s.usage;
    const r = row([c.conversation, c.backend, c.state, s ? duration(s.uptime_secs) : "",
      u ? mib(u.rss_bytes) : "", u ? u.cpu_secs.toFixed(2) + " s" : "", when(c.last_active)]);
    r.dataset.conversation = c.conversation;
    r.className = c.state;
    return r;
  }), "no conversations yet");

  fill("usage", d.usage.lines.map((l) => row([l.subject, l.tokens, l.budget === null ? "none" : l.budget])), "no tokens used today");

  const chain = document.getElementById("audit-chain");
  if (d.audit.chain.status === "intact") {
    chain.textContent = "intact (" + d.audit.chain.entries + " entries verified)";
    chain.className = "ok";
  } else {
    chain.textContent = "BROKEN at entry " + d.audit.chain.at_seq + ": " + d.audit.chain.reason;
    chain.className = "bad";
  }
  fill("audit", d.audit.entries.map((e) => row([e.seq, when(e.at), e.actor, e.action, e.conversation, e.detail])), "empty");
  document.getElementById("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const r = await fetch("/api/dashboard", { credentials: "same-origin" });
    if (!r.ok) throw new Error((await r.text()).trim());
    render(await r.json());
  } catch (e) {
    document.getElementById("refreshed").textContent = "cannot load: " + e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  setInterval(refresh, REFRESH_MS);
});
