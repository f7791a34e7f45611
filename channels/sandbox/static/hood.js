// The "Under the hood" panel: the demo agent's kill switch, the reconcile's clock, every lease
// with the time left on it, the outbox, the signed requests sent to /slack/events, the Web API
// calls threadwork made, and the task events, newest first.

let last = null;
let offset = 0; // the server's clock minus ours, in ms
let ticking = null;
let container = null;
let actions = null;

export function renderHood(el, hood, hoodActions) {
  container = el;
  actions = hoodActions;
  last = hood;
  if (hood.now) offset = Date.parse(hood.now) - Date.now();
  draw();
  if (!ticking) ticking = setInterval(draw, 1000);
}

function now() {
  return Date.now() + offset;
}

function seconds(iso) {
  return Math.round((Date.parse(iso) - now()) / 1000);
}

function draw() {
  if (!container || !last) return;
  const hood = last;
  const focused = document.activeElement?.id; // kept: the panel redraws every second
  container.replaceChildren(
    killSwitch(hood),
    section("Reconcile", [reconcileLine(hood)]),
    section(`Leases (${(hood.leases || []).length})`, leaseRows(hood)),
    section("Outbox", outboxRows(hood)),
    section("Requests to /slack/events", list(hood.requests, requestLine)),
    section("Web API calls threadwork made", list(hood.calls, callLine)),
    section("Task events", list(hood.events, eventLine)),
  );
  if (focused && container.querySelector(`#${focused}`)) document.getElementById(focused).focus();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function section(title, children) {
  const box = el("section", "hood-section");
  box.setAttribute("aria-label", title);
  box.append(el("h3", "", title), ...children);
  return box;
}

function list(items, line) {
  if (!items || !items.length) return [el("p", "empty", "nothing yet")];
  const ul = el("ul", "hood-list");
  for (const item of items) ul.append(line(item));
  return [ul];
}

function killSwitch(hood) {
  const hung = Boolean(hood.demo?.hung);
  const box = el("section", "hood-section kill");
  box.setAttribute("aria-label", "The demo agent");
  const button = el("button", `bk-button ${hung ? "primary" : "danger"}`);
  button.type = "button";
  button.id = "hang-demo";
  button.setAttribute("aria-pressed", String(hung));
  button.textContent = hung ? "▶ Let the demo agent answer again" : "☠ Kill the agent (hang its model)";
  button.addEventListener("click", () => actions.hang(!hung));
  const help = el(
    "p",
    "help",
    hung
      ? "The demo agent's model no longer answers. Its lease lapses with no progress; the reconcile re-dispatches the task, then, after the last attempt, blocks it."
      : "Hanging the demo model makes its next word never come, like a stuck model call.",
  );
  box.append(el("h3", "", "The demo agent"), button, help);
  return box;
}

function reconcileLine(hood) {
  const next = hood.next_reconcile_at ? Math.max(0, seconds(hood.next_reconcile_at)) : null;
  const text =
    `every ${hood.reconcile_interval_s ?? "?"} s` +
    (next !== null ? ` · next run in ${next} s` : "") +
    ` · lease ${hood.lease_ttl_s ?? "?"} s · ${hood.max_attempts ?? "?"} attempts`;
  return el("p", "reconcile", text);
}

function leaseRows(hood) {
  const leases = hood.leases || [];
  if (!leases.length) return [el("p", "empty", "no task is claimed")];
  const ul = el("ul", "hood-list leases");
  for (const lease of leases) {
    const li = el("li", "lease");
    li.dataset.ref = lease.ref;
    li.append(
      el("strong", "", lease.ref),
      el("span", "", ` ${lease.agent} · ${lease.status} · attempt ${lease.attempts}/${hood.max_attempts} · epoch ${lease.epoch} · `),
      el("span", "timer", leaseTimer(lease)),
    );
    ul.append(li);
  }
  return [ul];
}

function leaseTimer(lease) {
  if (lease.awaiting_input) return "paused: waiting for a person";
  if (!lease.lapses_at) return "no lease (not in a leased status)";
  const left = seconds(lease.lapses_at);
  return left >= 0 ? `lapses in ${left} s` : `lapsed ${-left} s ago: the reconcile acts at its next run`;
}

function outboxRows(hood) {
  const counts = hood.outbox?.counts || {};
  const summary = Object.entries(counts)
    .map(([state, n]) => `${state}: ${n}`)
    .join(" · ");
  const rows = list(hood.outbox?.open, (row) =>
    el("li", "", `#${row.id} ${row.kind} ${row.ref} · ${row.state} · attempt ${row.attempts}${row.last_error ? ` · ${row.last_error}` : ""}`),
  );
  return [el("p", "", summary || "nothing waiting: every row was delivered"), ...rows];
}

function requestLine(sent) {
  const time = new Date(sent.at * 1000).toLocaleTimeString();
  return el("li", sent.status >= 400 ? "failed" : "", `${time} ${sent.kind} → ${sent.status} in ${sent.ms} ms`);
}

function callLine(call) {
  const li = el("li", "");
  li.append(el("code", "", call.method), ` ${call.detail}${call.text ? ` · ${call.text}` : ""}`);
  return li;
}

function eventLine(event) {
  const time = new Date(event.at).toLocaleTimeString();
  const data = Object.entries(event.data || {})
    .slice(0, 4)
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
  const li = el("li", "");
  li.append(`${time} `, el("strong", "", event.ref), ` ${event.kind} by ${event.actor} `, el("span", "data", data));
  return li;
}
