// Modals drawn from the view JSON threadwork opened (views.open), kept as they are while open so
// that nothing the person typed is lost to a re-render; submitting sends view_submission.

import { inputValues, renderBlocks, textObject } from "./blocks.js";
import { context } from "./messages.js";
import { plain } from "./mrkdwn.js";

let ui = null; // { state, post, names }, given by the page

export function bindModal(page) {
  ui = page;
}

export function renderModal(ws) {
  const dialog = document.getElementById("modal");
  const view = ws.modals[ws.modals.length - 1];
  if (!view) {
    if (dialog.open) dialog.close();
    ui.state.modal = null;
    return;
  }
  if (ui.state.modal === view.id && dialog.open) return; // keeps what the person typed
  ui.state.modal = view.id;
  dialog.replaceChildren(modalForm(view));
  if (!dialog.open) dialog.showModal();
  dialog.querySelector("input, textarea, select")?.focus();
}

function modalForm(view) {
  const form = document.createElement("form");
  form.method = "dialog";
  const title = document.createElement("h2");
  title.id = "modal-title";
  title.append(textObject(view.title, { names: ui.names() }));
  form.append(title, renderBlocks(view.blocks, context(null, null)));
  const row = document.createElement("div");
  row.className = "dialog-buttons";
  const close = document.createElement("button");
  close.type = "button";
  close.append(plain(view.close?.text || "Cancel"));
  close.addEventListener("click", () => ui.post("dismiss", { view_id: view.id }));
  const submit = document.createElement("button");
  submit.type = "submit";
  submit.className = "bk-button primary";
  submit.append(plain(view.submit?.text || "Submit"));
  row.append(close, submit);
  form.append(row);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const { errors } = await ui.post("submit", { view_id: view.id, values: inputValues(form, view) });
      showErrors(form, errors || {});
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function showErrors(form, errors) {
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  for (const [block, text] of Object.entries(errors)) {
    const el = form.querySelector(`#input-${CSS.escape(block)}-error`);
    if (el) el.textContent = text;
  }
}

