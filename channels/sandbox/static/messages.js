// Messages as the page shows them: a channel's or a thread's messages (a task card is a message
// with blocks), their agent session line with its Stop button, the replies only the viewer sees,
// and the list that keeps unchanged messages' nodes between renders.

import { renderBlocks } from "./blocks.js";
import { mrkdwn } from "./mrkdwn.js";

const BOT_USER = "UBOT";
let ui = null; // { state, post, names, openThread, render }, given by the page

export function bind(page) {
  ui = page;
}

// Keeps the nodes of unchanged items, so a re-render never resets a menu or a scroll.
export function patchList(container, items, build) {
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 40;
  const old = new Map([...container.children].map((el) => [el.dataset.key, el]));
  const nodes = items.map((item) => {
    const { key, signature, make } = build(item);
    const kept = old.get(key);
    if (kept && kept.dataset.signature === signature) return kept;
    const el = make();
    el.dataset.key = key;
    el.dataset.signature = signature;
    return el;
  });
  if (nodes.length !== container.children.length || nodes.some((n, i) => container.children[i] !== n)) {
    container.replaceChildren(...nodes);
  }
  if (atBottom) container.scrollTop = container.scrollHeight;
}

export function repliesOf(ws, m) {
  return ws.messages.filter((r) => r.channel === m.channel && r.thread_ts === m.ts && r.ts !== m.ts);
}

export function sessionOf(ws, channel, ts) {
  return ws.sessions.find((s) => s.channel === channel && s.thread_ts === ts) || null;
}

export function messageItem(m, ws, inChannel) {
  const replies = inChannel ? repliesOf(ws, m) : [];
  const session = inChannel ? sessionOf(ws, m.channel, m.ts) : null;
  const signature = JSON.stringify([m, replies.length, session, ui.state.me]);
  return { key: m.ts, signature, make: () => messageNode(m, ws, replies, session) };
}

function author(m, ws) {
  if (m.user === BOT_USER) return { name: m.username || "threadwork", app: true };
  const person = ws.people.find((p) => p.id === m.user);
  return { name: person ? person.real_name : m.user, app: false };
}

function messageNode(m, ws, replies, session) {
  const who = author(m, ws);
  const el = document.createElement("article");
  el.className = "message" + (m.streaming ? " streaming" : "");
  el.setAttribute("aria-label", `${who.name} at ${clock(m.ts)}`);
  const mark = who.app ? (m.username ? "🤖" : "tw") : who.name[0];
  const { avatar, body, meta } = frame(who.name, mark, who.app);
  const time = document.createElement("time");
  time.textContent = clock(m.ts);
  meta.append(time);
  body.append(meta, content(m));
  if (m.streaming) body.append(badge("streaming…", "live"));
  if (session) body.append(sessionLine(session, m));
  if (replies.length) body.append(repliesButton(m, replies));
  el.append(avatar, body, messageActions(m, replies.length));
  return el;
}

// A message's avatar, and its body with the author's line (name, and APP for the app's).
function frame(author, mark, app) {
  const avatar = document.createElement("div");
  avatar.className = "avatar" + (app ? " app" : "");
  avatar.setAttribute("aria-hidden", "true");
  avatar.textContent = mark;
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("div");
  meta.className = "meta";
  const name = document.createElement("span");
  name.className = "author";
  name.textContent = author;
  meta.append(name);
  if (app) meta.append(badge("APP"));
  return { avatar, body, meta };
}

function content(m) {
  const box = document.createElement("div");
  box.className = "content";
  if (m.blocks && m.blocks.length) {
    box.append(renderBlocks(m.blocks, context(m.channel, m.ts)));
  } else {
    box.append(mrkdwn(m.text, ui.names()));
  }
  return box;
}

function badge(text, kind = "") {
  const span = document.createElement("span");
  span.className = `badge ${kind}`.trim();
  span.textContent = text;
  return span;
}

function clock(ts) {
  return new Date(Number(ts) * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function context(channel, ts) {
  return {
    names: ui.state.workspace ? ui.names() : {},
    onAction: (action, el) => {
      if (!channel) return;
      el.disabled = true;
      ui.post("action", { channel, ts, action }).finally(() => (el.disabled = false));
    },
  };
}

export const SESSION_TEXT = {
  processing: "⚙️ working…",
  active: "🟢 active",
  suspended: "⏸️ waiting for a person",
  closed: "✅ closed",
};

function sessionLine(session, m) {
  const line = document.createElement("div");
  line.className = `session-line ${session.status}`;
  const text = document.createElement("span");
  text.textContent = `Agent session · ${session.username || "agent"} · ${SESSION_TEXT[session.status] || session.status}`;
  line.append(text);
  if (session.status === "processing") line.append(stopButton(m.channel, m.ts));
  return line;
}

export function stopButton(channel, threadTs) {
  const stop = document.createElement("button");
  stop.type = "button";
  stop.className = "bk-button danger stop";
  stop.textContent = "⏹ Stop";
  stop.setAttribute("aria-label", "Stop the agent session");
  stop.addEventListener("click", () => {
    stop.disabled = true;
    ui.post("stop", { channel, thread_ts: threadTs }).catch(() => (stop.disabled = false));
  });
  return stop;
}

function repliesButton(m, replies) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "replies";
  button.textContent = `${replies.length} ${replies.length === 1 ? "reply" : "replies"}`;
  button.setAttribute("aria-label", `${button.textContent}: open the thread`);
  button.addEventListener("click", () => ui.openThread(m.channel, m.ts));
  return button;
}

function messageActions(m, replyCount) {
  const bar = document.createElement("div");
  bar.className = "message-actions";
  const reply = document.createElement("button");
  reply.type = "button";
  reply.textContent = replyCount ? "Open thread" : "Reply in thread";
  reply.addEventListener("click", () => ui.openThread(m.channel, m.thread_ts || m.ts));
  const shortcut = document.createElement("button");
  shortcut.type = "button";
  shortcut.textContent = "Create task from message";
  shortcut.addEventListener("click", () =>
    ui.post("shortcut", { channel: m.channel, ts: m.ts, callback_id: "create_task_from_message" }),
  );
  bar.append(reply, shortcut);
  return bar;
}

export function ephemeralItem(e) {
  return { key: e.ts, signature: JSON.stringify(e), make: () => ephemeralNode(e) };
}

function ephemeralNode(e) {
  const el = document.createElement("article");
  el.className = "message ephemeral";
  el.setAttribute("aria-label", "threadwork, only visible to you");
  const { avatar, body, meta } = frame("threadwork", "tw", true);
  meta.append(badge("Only visible to you", "private"));
  if (e.command) {
    const typed = document.createElement("code");
    typed.className = "typed";
    typed.textContent = e.command;
    meta.append(typed);
  }
  const text = document.createElement("div");
  text.className = "content";
  text.append(mrkdwn(e.text, ui.names()));
  const dismiss = document.createElement("button");
  dismiss.type = "button";
  dismiss.className = "dismiss";
  dismiss.textContent = "Dismiss";
  dismiss.addEventListener("click", () => {
    ui.state.dismissed.add(e.ts);
    sessionStorage.setItem("sandbox.dismissed", JSON.stringify([...ui.state.dismissed]));
    ui.render();
  });
  body.append(meta, text, dismiss);
  el.append(avatar, body);
  return el;
}

