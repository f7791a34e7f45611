// The sandbox page: a Slack-like view of the workspace that threadwork serves, kept live over
// server-sent events. What the person does is posted to /sandbox/*, where it becomes the signed
// request Slack would send to threadwork.

import { confirmDialog, renderBlocks } from "./blocks.js";
import { renderHood } from "./hood.js";
import {
  SESSION_TEXT,
  bind,
  context,
  ephemeralItem,
  messageItem,
  patchList,
  repliesOf,
  sessionOf,
  stopButton,
} from "./messages.js";
import { bindModal, renderModal } from "./modal.js";

const BOT_USER = "UBOT";
const $ = (id) => document.getElementById(id);

const state = {
  me: localStorage.getItem("sandbox.me") || "U0ADA",
  view: location.hash.slice(1) || "C0GENERAL", // a channel id, or "home"
  thread: null, // { channel, ts }
  workspace: null,
  hood: null,
  modal: null, // the id of the modal shown
  dismissed: new Set(JSON.parse(sessionStorage.getItem("sandbox.dismissed") || "[]")),
  source: null,
};

// Talking to the sandbox ---------------------------------------------------------------------

async function post(path, body) {
  const response = await fetch(`/sandbox/${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ as: state.me, ...body }),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    toast(answer.error || `The sandbox answered ${response.status}.`);
    throw new Error(answer.error || String(response.status));
  }
  return answer;
}

function connect() {
  if (state.source) state.source.close();
  const source = new EventSource(`/sandbox/stream?as=${encodeURIComponent(state.me)}`);
  state.source = source;
  source.addEventListener("workspace", (event) => {
    state.workspace = JSON.parse(event.data);
    setConnection("live");
    render();
  });
  source.addEventListener("hood", (event) => {
    state.hood = JSON.parse(event.data);
    renderHood($("hood-body"), state.hood, hoodActions);
  });
  source.addEventListener("error", () => setConnection("reconnecting…"));
}

function setConnection(text) {
  const el = $("connection");
  el.textContent = text;
  el.dataset.state = text === "live" ? "live" : "down";
}

function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), 6000);
}

// Rendering ------------------------------------------------------------------------------------

function names() {
  const ws = state.workspace;
  const map = { [BOT_USER]: "threadwork" };
  for (const p of ws.people) map[p.id] = p.real_name;
  for (const c of ws.channels) map[c.id] = c.name;
  return map;
}

function render() {
  const ws = state.workspace;
  if (!ws) return;
  if (state.view !== "home" && !ws.channels.some((c) => c.id === state.view)) {
    state.view = ws.channels[0].id;
    state.thread = null;
  }
  renderSidebar(ws);
  renderMain(ws);
  renderThread(ws);
  renderModal(ws);
}

function renderSidebar(ws) {
  const viewer = $("viewer");
  if (!viewer.options.length) {
    for (const p of ws.people) viewer.append(new Option(p.real_name, p.id));
  }
  viewer.value = state.me;
  const list = $("channel-list");
  list.replaceChildren(
    ...ws.channels.map((c) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "nav-item";
      button.dataset.channel = c.id;
      button.textContent = `${c.private ? "🔒" : "#"} ${c.name}`;
      if (state.view === c.id) button.setAttribute("aria-current", "page");
      button.addEventListener("click", () => openChannel(c.id));
      li.append(button);
      return li;
    }),
  );
  const home = $("home-link");
  if (state.view === "home") home.setAttribute("aria-current", "page");
  else home.removeAttribute("aria-current");
}

function renderMain(ws) {
  const onHome = state.view === "home";
  $("home").hidden = !onHome;
  $("messages").hidden = onHome;
  $("composer").hidden = onHome;
  if (onHome) {
    $("channel-title").textContent = "🏠 Home";
    $("channel-topic").textContent = "threadwork's App Home: your board, as the app published it.";
    const home = $("home");
    home.replaceChildren(
      ws.home ? renderBlocks(ws.home.blocks, context(null, null)) : note("Asking threadwork for your board…"),
    );
    return;
  }
  const channel = ws.channels.find((c) => c.id === state.view);
  $("channel-title").textContent = `${channel.private ? "🔒" : "#"} ${channel.name}`;
  $("channel-topic").textContent = channel.topic;
  const input = $("composer-input");
  const label = `Message ${channel.private ? "" : "#"}${channel.name}`;
  $("composer-label").textContent = label;
  input.placeholder = `${label} — or /task new <title>`;
  const top = ws.messages.filter((m) => m.channel === channel.id && (!m.thread_ts || m.thread_ts === m.ts));
  const replies = ws.ephemerals.filter((e) => e.channel === channel.id && !e.thread_ts);
  const items = [...top.map((m) => ({ kind: "message", m })), ...replies.map((e) => ({ kind: "ephemeral", m: e }))];
  items.sort((a, b) => Number(a.m.ts) - Number(b.m.ts));
  patchList($("messages"), items.filter((i) => !state.dismissed.has(i.m.ts)), (item) =>
    item.kind === "message" ? messageItem(item.m, ws, true) : ephemeralItem(item.m),
  );
}

function note(text) {
  const p = document.createElement("p");
  p.className = "note";
  p.textContent = text;
  return p;
}

// The thread pane ------------------------------------------------------------------------------

function renderThread(ws) {
  const pane = $("thread");
  const thread = state.thread;
  const root = thread && ws.messages.find((m) => m.channel === thread.channel && m.ts === thread.ts);
  pane.hidden = !root;
  if (!root) return;
  const channel = ws.channels.find((c) => c.id === root.channel);
  $("thread-title").textContent = `Thread in ${channel.private ? "🔒" : "#"}${channel.name}`;
  const session = sessionOf(ws, root.channel, root.ts);
  const bar = $("session");
  bar.replaceChildren();
  bar.hidden = !session;
  if (session) {
    const text = document.createElement("span");
    text.textContent = `${session.username || "Agent"} · ${SESSION_TEXT[session.status] || session.status}`;
    bar.dataset.status = session.status;
    bar.append(text);
    if (session.status === "processing") bar.append(stopButton(root.channel, root.ts));
  }
  const replies = repliesOf(ws, root);
  const notes = ws.ephemerals.filter((e) => e.channel === root.channel && e.thread_ts === root.ts);
  const items = [
    { kind: "message", m: root },
    ...replies.map((m) => ({ kind: "message", m })),
    ...notes.map((e) => ({ kind: "ephemeral", m: e })),
  ].sort((a, b) => Number(a.m.ts) - Number(b.m.ts));
  patchList($("thread-messages"), items.filter((i) => !state.dismissed.has(i.m.ts)), (item) =>
    item.kind === "message" ? messageItem(item.m, ws, false) : ephemeralItem(item.m),
  );
}

function openThread(channel, ts) {
  state.thread = { channel, ts };
  render();
  $("thread-input").focus();
}

function openChannel(id) {
  state.view = id;
  state.thread = null;
  location.hash = id;
  render();
  $("composer-input").focus();
}

// Composers, the sidebar and the panel ------------------------------------------------------

function composer(formId, inputId, thread) {
  const form = $(formId);
  const input = $(inputId);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    const where = thread() || { channel: state.view };
    input.disabled = true;
    try {
      await post("say", { channel: where.channel, text, thread_ts: where.ts || null });
      input.value = "";
    } finally {
      input.disabled = false;
      input.focus();
    }
  });
}

const hoodActions = {
  hang: (hung) => post("demo", { hung }),
};

function setup() {
  composer("composer", "composer-input", () => null);
  composer("thread-composer", "thread-input", () => state.thread);
  $("viewer").addEventListener("change", (event) => {
    state.me = event.target.value;
    localStorage.setItem("sandbox.me", state.me);
    state.thread = null;
    state.modal = null;
    connect();
  });
  $("home-link").addEventListener("click", () => {
    state.view = "home";
    state.thread = null;
    location.hash = "home";
    render();
    post("home", {});
  });
  $("thread-close").addEventListener("click", () => {
    state.thread = null;
    render();
  });
  const toggle = (open) => {
    $("hood").hidden = !open;
    $("hood-toggle").setAttribute("aria-expanded", String(open));
    localStorage.setItem("sandbox.hood", open ? "open" : "closed");
  };
  $("hood-toggle").addEventListener("click", () => toggle($("hood").hidden));
  $("hood-close").addEventListener("click", () => toggle(false));
  toggle(localStorage.getItem("sandbox.hood") === "open");
  $("modal").addEventListener("cancel", () => state.modal && post("dismiss", { view_id: state.modal }));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.thread && !$("modal").open) {
      state.thread = null;
      render();
    }
  });
  if (state.view === "home") post("home", {});
  connect();
}

const page = { state, post, names, openThread, render };
bind(page);
bindModal(page);
window.sandbox = { state, confirmDialog };
setup();
