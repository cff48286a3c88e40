// Flows: the list, and an editor that shows each action (its type and its options as JSON),
// adds, removes and moves actions, and saves through the API. The API names a bad action by
// its index (`actions[2]: ...`): the message is shown at that action. A test call starts the
// flow on a new call.

import { api, getCreated, list } from "../api.js";
import { field, fill, flash, flashNext, form, h, table, when } from "../ui.js";

export const TYPES = [
  "answer", "talk", "play", "beep", "sleep", "digits_receive", "digits_send", "branch",
  "condition_variable", "goto", "variable_set", "webhook_send", "fetch_flow", "transcribe_start",
  "transcribe_stop", "recording_start", "recording_stop", "ai_talk", "connect", "call",
  "queue_join", "conference_join", "hangup", "stop",
];

export async function render(main, params) {
  if (params[0]) return editor(main, params[0] === "new" ? null : params[0]);
  const flows = await list("/v1.0/flows", { page_size: 100 });
  main.append(
    h("h1", {}, "Flows"),
    h("p", {}, h("a", { href: "#/flows/new" }, "New flow")),
    flows.result.length
      ? table([
        ["Name", (f) => h("a", { href: `#/flows/${f.id}` }, f.name || "(no name)")],
        ["Actions", (f) => String(f.actions?.length ?? 0)],
        ["Updated", (f) => when(f.tm_update)],
      ], flows.result, { label: "Flows" })
      : h("p", { class: "muted" }, "No flows yet."),
  );
}

async function editor(main, id) {
  const flow = id
    ? await getCreated(`/v1.0/flows/${id}`)
    : { name: "", detail: "", actions: [{ type: "answer", option: {} }, { type: "talk", option: { text: "Hello", language: "en-US" } }] };
  const actions = flow.actions.map((a) => ({ id: a.id, type: a.type, option: a.option ?? {}, next_id: a.next_id }));
  const list_ = h("ol", { class: "actions", id: "actions" });
  const name = field("Name", "name", { value: flow.name ?? "", required: true });
  const detail = field("Description", "detail", { value: flow.detail ?? "" });
  const errorBox = h("p", { class: "error", role: "alert", id: "flow-error" });

  const draw = (invalid = null, message = "") => {
    fill(list_, ...actions.map((a, i) => {
      const type = h("select", { "aria-label": `Action ${i + 1} type`, name: `type-${i}` },
        ...TYPES.map((t) => h("option", { value: t, selected: t === a.type || null }, t)));
      type.addEventListener("change", () => { a.type = type.value; });
      const option = h("textarea", { "aria-label": `Action ${i + 1} options (JSON)`, name: `option-${i}`, rows: 3 });
      option.value = JSON.stringify(a.option ?? {}, null, 1);
      option.addEventListener("input", () => { a.optionText = option.value; });
      const err = i === invalid ? h("p", { class: "error", id: `action-error-${i}`, role: "alert" }, message) : null;
      if (err) {
        option.setAttribute("aria-invalid", "true");
        option.setAttribute("aria-describedby", `action-error-${i}`);
      }
      const move = (d) => () => {
        const j = i + d;
        if (j < 0 || j >= actions.length) return;
        [actions[i], actions[j]] = [actions[j], actions[i]];
        draw();
      };
      return h("li", { class: `action${err ? " invalid" : ""}`, "data-index": i },
        h("div", { class: "row" },
          h("strong", {}, `${i + 1}.`), type,
          h("button", { type: "button", class: "secondary", onclick: move(-1), "aria-label": `Move action ${i + 1} up` }, "↑"),
          h("button", { type: "button", class: "secondary", onclick: move(1), "aria-label": `Move action ${i + 1} down` }, "↓"),
          h("button", { type: "button", class: "secondary", "aria-label": `Remove action ${i + 1}`,
            onclick: () => { actions.splice(i, 1); draw(); } }, "Remove")),
        option, err);
    }));
  };

  const save = h("button", { type: "button" }, "Save flow");
  save.addEventListener("click", async () => {
    errorBox.textContent = "";
    // Options as typed (JSON); a syntax error is shown at its action before asking the API.
    const body = { name: name.querySelector("input").value, detail: detail.querySelector("input").value, actions: [] };
    for (const [i, a] of actions.entries()) {
      let option = a.option;
      if (a.optionText !== undefined) {
        try {
          option = JSON.parse(a.optionText || "{}");
        } catch (e) {
          draw(i, `Options are not valid JSON: ${e.message}`);
          list_.querySelector(`[name=option-${i}]`)?.focus();
          return;
        }
      }
      const out = { type: a.type, option };
      if (a.id) out.id = a.id;
      if (a.next_id) out.next_id = a.next_id;
      body.actions.push(out);
    }
    save.disabled = true;
    try {
      const saved = id ? await api("PUT", `/v1.0/flows/${id}`, body) : await api("POST", "/v1.0/flows", body);
      for (const [i, a] of saved.actions.entries()) {
        actions[i].id = a.id;
        actions[i].option = a.option;
        delete actions[i].optionText;
      }
      draw();
      if (id) flash("Flow saved.", "info");
      else {
        flashNext("Flow saved.");
        location.hash = `#/flows/${saved.id}`;
      }
    } catch (e) {
      const m = /^actions\[(\d+)\]: (.*)$/s.exec(e.message);
      if (m) {
        draw(Number(m[1]), m[2]);
        list_.querySelector(`[name=option-${m[1]}]`)?.focus();
      } else {
        errorBox.textContent = e.message;
      }
    } finally {
      save.disabled = false;
    }
  });
  const add = h("button", { type: "button", class: "secondary" }, "Add action");
  add.addEventListener("click", () => {
    actions.push({ type: "talk", option: { text: "", language: "en-US" } });
    draw();
    list_.querySelector(`[name=type-${actions.length - 1}]`)?.focus();
  });

  main.append(
    h("h1", {}, id ? `Flow ${flow.name}` : "New flow"),
    h("div", { class: "flow-meta", style: null }, name, detail),
    h("h2", {}, "Actions"),
    list_,
    h("div", { class: "row" }, add, save),
    errorBox,
  );
  draw();
  if (id) {
    main.append(
      h("h2", {}, "Test call"),
      form([
        field("From (E.164)", "source", { placeholder: "+15550001000", required: true }),
        field("To (E.164)", "destination", { placeholder: "+15550002000", required: true }),
      ], "Start a test call", async (v) => {
        const r = await api("POST", "/v1.0/calls", { source: v.source.trim(), destinations: [v.destination.trim()], flow_id: id });
        location.hash = `#/calls/${r.calls[0].id}`;
      }, { label: "Test call", inline: true }),
    );
  }
  main.append(h("p", {}, h("a", { href: "#/flows" }, "All flows")));
}
