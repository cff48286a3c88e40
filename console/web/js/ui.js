// Small DOM helpers. Text always goes in as text (never as HTML), so what the API returns
// cannot inject markup.

/** An element: `h("a", {href: "#/x"}, "text", child, ...)`. Attributes starting with `on`
 * are listeners; `null`/`false` attributes and children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces `el`'s children (skipping `null`, `undefined` and `false`). */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/** Shows `message` in the page's alert area (`kind`: "error" or "info"); empty clears it. */
export function flash(message, kind = "error") {
  const el = document.getElementById("flash");
  el.className = `flash ${kind === "info" ? "info" : ""}`;
  el.textContent = message ?? "";
}

let pending = "";

/** Shows `message` (an info) on the next page shown. */
export function flashNext(message) {
  pending = message;
}

/** The message left for this page (see [`flashNext`]), once. */
export function takeFlash() {
  const m = pending;
  pending = "";
  return m ? [m, "info"] : [""];
}

/** A status badge. */
export function status(s) {
  return h("span", { class: `status ${s}`, "data-status": s }, s);
}

/** Micros as dollars (`$1.234567` keeps every micro). */
export function money(micros) {
  if (micros === null || micros === undefined) return "";
  const neg = micros < 0;
  const abs = Math.abs(micros);
  const whole = Math.floor(abs / 1e6);
  const frac = String(abs % 1e6).padStart(6, "0").replace(/0{1,4}$/, "");
  return `${neg ? "-" : ""}$${whole}.${frac.padEnd(2, "0")}`;
}

/** A timestamp in the viewer's locale (empty for none). */
export function when(ts) {
  return ts ? new Date(ts).toLocaleString() : "";
}

/**
 * A form whose submit runs `action(values, form)` with the submit button disabled and
 * progress shown; an error's message is shown in the form's alert (and returned to `onError`).
 */
export function form(fields, submitLabel, action, opts = {}) {
  const err = h("p", { class: "error", role: "alert" });
  const button = h("button", { type: "submit" }, submitLabel);
  const f = h("form", { class: opts.inline ? "inline" : null, "aria-label": opts.label ?? submitLabel },
    ...fields, button, err);
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    button.disabled = true;
    try {
      const values = Object.fromEntries(new FormData(f).entries());
      await action(values, f);
    } catch (ex) {
      err.textContent = ex.message;
      opts.onError?.(ex);
    } finally {
      button.disabled = false;
    }
  });
  return f;
}

/**
 * Shows in `box` a form titled `title` to change one resource: `save(values, form)` runs on
 * submit and the form goes away once it succeeds; Cancel (or Escape) closes it unchanged. The
 * first control gets the focus, so the keyboard lands where the editing happens.
 */
export function editor(box, title, fields, save) {
  const close = () => fill(box);
  const f = form(fields, "Save", async (v, el) => {
    await save(v, el);
    close();
  }, { label: title });
  f.append(h("button", { type: "button", class: "secondary", onclick: close }, "Cancel"));
  f.addEventListener("keydown", (e) => {
    if (e.key === "Escape") close();
  });
  fill(box, h("h2", {}, title), f);
  f.querySelector("input, select, textarea")?.focus();
  return f;
}

/** A button running `action()` with itself disabled meanwhile; an error shows in the page's
 * alert. */
export function actionButton(label, attrs, action) {
  const b = h("button", { type: "button", ...attrs }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try {
      await action();
    } catch (e) {
      flash(e.message);
    } finally {
      b.disabled = false;
    }
  });
  return b;
}

/** A table row's Edit and Delete buttons for `what` (e.g. "trunk carrier", in their labels):
 * `edit()` opens its editor, `remove()` deletes it (see [`actionButton`]). */
export function editDelete(what, edit, remove) {
  return h("div", { class: "row" },
    h("button", { type: "button", class: "secondary", "aria-label": `Edit ${what}`, onclick: edit }, "Edit"),
    actionButton("Delete", { class: "danger", "aria-label": `Delete ${what}` }, remove));
}

/** A labelled input. */
export function field(label, name, attrs = {}) {
  const control = attrs.type === "textarea"
    ? h("textarea", { name, ...attrs, type: null })
    : attrs.options
      ? h("select", { name, ...attrs, options: null },
        ...attrs.options.map((o) => h("option", { value: o, selected: o === attrs.value || null }, o)))
      : h("input", { name, type: "text", ...attrs });
  if (attrs.type === "textarea" && attrs.value !== undefined) control.value = attrs.value;
  return h("label", {}, label, control);
}

/** A table of `rows` with `columns` = [[heading, row => cell], ...]. */
export function table(columns, rows, opts = {}) {
  return h("table", { class: "responsive", "aria-label": opts.label ?? null },
    h("thead", {}, h("tr", {}, ...columns.map(([c]) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, ...rows.map((r) => {
      const tr = h("tr", { "data-id": r.id ?? null },
        ...columns.map(([c, f]) => h("td", { "data-label": c }, f(r))));
      return tr;
    })),
  );
}

/** A "Next page" control for a list page (`load(token)` loads that page). */
export function pager(next, load) {
  return h("div", { class: "pager" },
    next ? h("button", { class: "secondary", onclick: () => load(next) }, "Next page") : null);
}
