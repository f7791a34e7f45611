// Slack's mrkdwn as DOM nodes: *bold*, _italic_, ~strike~, `code`, ```blocks```, > quotes,
// <@U…> and <#C…> mentions, <!date^…|fallback>, <url|label> links and :emoji:. Every piece of
// text becomes a text node (never HTML), and &lt; &gt; &amp; are read back as the characters
// they stand for, as Slack shows them.

const EMOJI = {
  robot_face: "🤖", white_circle: "⚪", large_blue_circle: "🔵", eyes: "👀",
  white_check_mark: "✅", red_circle: "🔴", heavy_multiplication_x: "✖️", speech_balloon: "💬",
  hourglass: "⌛", zap: "⚡", gear: "⚙️", large_green_circle: "🟢", double_vertical_bar: "⏸️",
  warning: "⚠️", paperclip: "📎", black_square_for_stop: "⏹️", octagonal_sign: "🛑",
  wave: "👋", tada: "🎉", memo: "📝", lock: "🔒", bulb: "💡", x: "❌", heavy_check_mark: "✔️",
};

const INLINE = new RegExp(
  [
    "(`[^`\\n]+`)", // code
    "(<[^<>\\n]+>)", // markup: mentions, channels, dates, links
    "((?<![\\w*])\\*[^*\\n]+?\\*(?![\\w*]))", // bold
    "((?<![\\w_])_[^_\\n]+?_(?![\\w_]))", // italic
    "((?<![\\w~])~[^~\\n]+?~(?![\\w~]))", // strike
    "(:[a-z0-9_+-]+:)", // emoji
    "(\\n)",
  ].join("|"),
  "g",
);

export function unescapeEntities(text) {
  return text.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

/** Renders ``text`` (mrkdwn) into a fragment; ``names`` maps user and channel ids to names. */
export function mrkdwn(text, names = {}) {
  const out = document.createDocumentFragment();
  const parts = String(text ?? "").split("```");
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      const pre = document.createElement("pre");
      pre.textContent = unescapeEntities(part.replace(/^\n/, ""));
      out.append(pre);
    } else {
      out.append(quoted(part, names));
    }
  });
  return out;
}

function quoted(text, names) {
  const out = document.createDocumentFragment();
  const lines = text.split("\n");
  let quote = null;
  lines.forEach((line, i) => {
    const isQuote = line.startsWith("&gt; ") || line === "&gt;";
    if (isQuote) {
      if (!quote) {
        quote = document.createElement("blockquote");
        out.append(quote);
      } else {
        quote.append(document.createElement("br"));
      }
      quote.append(inline(line.replace(/^&gt; ?/, ""), names));
      return;
    }
    quote = null;
    out.append(inline(line, names));
    if (i < lines.length - 1) out.append(document.createElement("br"));
  });
  return out;
}

export function inline(text, names = {}) {
  const out = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) out.append(unescapeEntities(text.slice(last, match.index)));
    out.append(token(match[0], names));
    last = match.index + match[0].length;
  }
  if (last < text.length) out.append(unescapeEntities(text.slice(last)));
  return out;
}

function token(raw, names) {
  if (raw === "\n") return document.createElement("br");
  const first = raw[0];
  if (first === "`") return wrap("code", document.createTextNode(unescapeEntities(raw.slice(1, -1))));
  if (first === "<") return markup(raw.slice(1, -1), names);
  if (first === "*") return wrap("strong", inline(raw.slice(1, -1), names));
  if (first === "_") return wrap("em", inline(raw.slice(1, -1), names));
  if (first === "~") return wrap("del", inline(raw.slice(1, -1), names));
  const emoji = EMOJI[raw.slice(1, -1)];
  if (emoji) {
    const span = document.createElement("span");
    span.className = "emoji";
    span.setAttribute("role", "img");
    span.setAttribute("aria-label", raw.slice(1, -1).replace(/_/g, " "));
    span.textContent = emoji;
    return span;
  }
  return document.createTextNode(raw);
}

function wrap(tag, child) {
  const el = document.createElement(tag);
  el.append(child);
  return el;
}

function markup(body, names) {
  const [target, label] = splitOnce(body, "|");
  if (target.startsWith("@")) {
    const id = target.slice(1);
    return pill("mention", "@" + (names[id] || label || id));
  }
  if (target.startsWith("#")) {
    const id = target.slice(1);
    return pill("channel-link", "#" + (names[id] || label || id));
  }
  if (target.startsWith("!date^")) {
    const seconds = Number(target.split("^")[1]);
    const when = Number.isFinite(seconds) ? new Date(seconds * 1000) : null;
    const text = when ? when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : label;
    return document.createTextNode(text || "");
  }
  if (target.startsWith("!")) return pill("mention", "@" + (label || target.slice(1).split("^")[0]));
  const url = unescapeEntities(target);
  if (/^https?:\/\//i.test(url)) {
    const a = document.createElement("a");
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = unescapeEntities(label || url);
    return a;
  }
  return document.createTextNode(unescapeEntities("<" + body + ">"));
}

function splitOnce(text, sep) {
  const at = text.indexOf(sep);
  return at < 0 ? [text, ""] : [text.slice(0, at), text.slice(at + 1)];
}

function pill(className, text) {
  const span = document.createElement("span");
  span.className = className;
  span.textContent = text;
  return span;
}

/** Plain text: a Block Kit plain_text object's text, with :emoji: shown. */
export function plain(text) {
  const out = document.createDocumentFragment();
  let last = 0;
  for (const match of String(text ?? "").matchAll(/:[a-z0-9_+-]+:/g)) {
    const emoji = EMOJI[match[0].slice(1, -1)];
    if (!emoji) continue;
    out.append(text.slice(last, match.index), emoji);
    last = match.index + match[0].length;
  }
  out.append(String(text ?? "").slice(last));
  return out;
}
