// Block Kit as DOM: the blocks and elements threadwork sends (section with text, fields and an
// accessory; context; actions with buttons and static_select menus; header; divider; and, in
// modals, input blocks). A control calls ``onAction(action)`` with the action payload Slack
// would send; a button with a ``confirm`` object asks first, in a dialog, as Slack does.

import { mrkdwn, plain } from "./mrkdwn.js";

export function renderBlocks(blocks, ctx) {
  const box = document.createElement("div");
  box.className = "blocks";
  for (const block of blocks || []) box.append(renderBlock(block, ctx));
  return box;
}

function renderBlock(block, ctx) {
  const render = BLOCKS[block.type];
  if (render) return render(block, ctx);
  const unknown = document.createElement("div");
  unknown.className = "block unsupported";
  unknown.textContent = `(a ${block.type} block, which the sandbox does not draw)`;
  return unknown;
}

export function textObject(obj, ctx) {
  const span = document.createElement("span");
  if (!obj) return span;
  span.append(obj.type === "mrkdwn" ? mrkdwn(obj.text, ctx.names) : plain(obj.text));
  return span;
}

const BLOCKS = {
  section(block, ctx) {
    const el = div("block section");
    const body = div("section-body");
    if (block.text) body.append(wrapText(block.text, ctx));
    if (block.fields) {
      const fields = div("fields");
      for (const field of block.fields) fields.append(wrapText(field, ctx, "field"));
      body.append(fields);
    }
    el.append(body);
    if (block.accessory) el.append(element(block.accessory, block, ctx));
    return el;
  },
  context(block, ctx) {
    const el = div("block context");
    for (const item of block.elements || []) {
      if (item.type === "image") continue;
      el.append(textObject(item, ctx));
    }
    return el;
  },
  actions(block, ctx) {
    const el = div("block actions");
    el.setAttribute("role", "group");
    el.setAttribute("aria-label", "Task controls");
    for (const item of block.elements || []) el.append(element(item, block, ctx));
    return el;
  },
  header(block, ctx) {
    const el = document.createElement("h3");
    el.className = "block header";
    el.append(textObject(block.text, ctx));
    return el;
  },
  divider() {
    const hr = document.createElement("hr");
    hr.className = "block divider";
    return hr;
  },
  input(block, ctx) {
    const el = div("block input");
    const id = `input-${block.block_id}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.append(textObject(block.label, ctx));
    if (block.optional) label.append(" (optional)");
    el.append(label, inputElement(block, id));
    if (block.hint) el.append(wrapText(block.hint, ctx, "hint"));
    const error = div("field-error");
    error.id = `${id}-error`;
    error.setAttribute("role", "alert");
    el.append(error);
    return el;
  },
};

function div(className) {
  const el = document.createElement("div");
  el.className = className;
  return el;
}

function wrapText(obj, ctx, className = "text") {
  const el = div(className);
  el.append(textObject(obj, ctx));
  return el;
}

function element(item, block, ctx) {
  if (item.type === "button") return button(item, block, ctx);
  if (item.type === "static_select") return select(item, block, ctx);
  const other = document.createElement("span");
  other.className = "unsupported";
  other.textContent = `(${item.type})`;
  return other;
}

function button(item, block, ctx) {
  const el = document.createElement("button");
  el.type = "button";
  el.className = `bk-button ${item.style || ""}`.trim();
  el.append(plain(item.text?.text));
  el.dataset.actionId = item.action_id;
  el.addEventListener("click", async () => {
    if (item.confirm && !(await confirmDialog(item.confirm, ctx))) return;
    const action = { type: "button", action_id: item.action_id, block_id: block.block_id };
    if (item.value !== undefined) action.value = item.value;
    ctx.onAction(action, el);
  });
  return el;
}

function select(item, block, ctx) {
  const el = document.createElement("select");
  el.className = "bk-select";
  el.dataset.actionId = item.action_id;
  el.setAttribute("aria-label", item.placeholder?.text || "Choose");
  const placeholder = new Option(item.placeholder?.text || "Choose…", "");
  placeholder.disabled = true;
  placeholder.selected = true;
  el.append(placeholder);
  for (const option of item.options || []) el.append(new Option(option.text.text, option.value));
  el.addEventListener("change", () => {
    const option = (item.options || []).find((o) => o.value === el.value);
    if (!option) return;
    const action = {
      type: "static_select",
      action_id: item.action_id,
      block_id: block.block_id,
      selected_option: option,
    };
    ctx.onAction(action, el);
  });
  return el;
}

function inputElement(block, id) {
  const item = block.element || {};
  let el;
  if (item.type === "static_select") {
    el = document.createElement("select");
    for (const option of item.options || []) el.append(new Option(option.text.text, option.value));
    if (item.initial_option) el.value = item.initial_option.value;
  } else {
    el = document.createElement(item.multiline ? "textarea" : "input");
    if (!item.multiline) el.type = "text";
    el.value = item.initial_value || "";
    if (item.placeholder) el.placeholder = item.placeholder.text;
  }
  el.id = id;
  el.dataset.blockId = block.block_id;
  el.dataset.actionId = item.action_id || "value";
  el.dataset.type = item.type || "plain_text_input";
  el.setAttribute("aria-describedby", `${id}-error`);
  if (!block.optional) el.required = true;
  return el;
}

/** The values of a modal's input blocks, shaped as Slack's ``view.state.values``. */
export function inputValues(form, view) {
  const values = {};
  for (const el of form.querySelectorAll("[data-block-id]")) {
    const state = { type: el.dataset.type };
    if (el.dataset.type === "static_select") {
      const block = (view.blocks || []).find((b) => b.block_id === el.dataset.blockId);
      const option = (block?.element?.options || []).find((o) => o.value === el.value);
      state.selected_option = option || null;
    } else {
      state.value = el.value;
    }
    values[el.dataset.blockId] = { [el.dataset.actionId]: state };
  }
  return values;
}

/** Asks as a Block Kit ``confirm`` object says; resolves true when confirmed. */
export function confirmDialog(confirm, ctx) {
  const dialog = document.createElement("dialog");
  dialog.className = "confirm";
  dialog.setAttribute("aria-labelledby", "confirm-title");
  const title = document.createElement("h2");
  title.id = "confirm-title";
  title.append(plain(confirm.title?.text || "Are you sure?"));
  const text = div("confirm-text");
  text.append(textObject(confirm.text, ctx));
  const deny = document.createElement("button");
  deny.type = "button";
  deny.append(plain(confirm.deny?.text || "Cancel"));
  const yes = document.createElement("button");
  yes.type = "button";
  yes.className = "bk-button primary";
  yes.append(plain(confirm.confirm?.text || "Yes"));
  const row = div("dialog-buttons");
  row.append(deny, yes);
  dialog.append(title, text, row);
  document.body.append(dialog);
  return new Promise((resolve) => {
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    deny.addEventListener("click", () => done(false));
    yes.addEventListener("click", () => done(true));
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    dialog.showModal();
    yes.focus();
  });
}
