// AI assistants: the list, new, changed and deleted assistants (name, prompt, engine model;
// the engine key is write-only and never shown: left empty on a change, it is kept).

import { api, list } from "../api.js";
import { editDelete, editor, field, fill, flash, form, h, table, when } from "../ui.js";

export async function render(main) {
  const box = h("div", { id: "ai-list" });
  const edit = h("div", { id: "ai-edit" });
  const shown = new Map();
  const draw = () => fill(box, shown.size
    ? table([
      ["Assistant", (a) => a.name],
      ["Engine model", (a) => a.engine_model],
      ["Prompt", (a) => (a.init_prompt ?? "").slice(0, 80)],
      ["Created", (a) => when(a.tm_create)],
      ["", (a) => editDelete(`assistant ${a.name}`, () => change(a), async () => {
        await api("DELETE", `/v1.0/ais/${a.id}`);
        shown.delete(a.id);
        draw();
        flash(`Assistant ${a.name} deleted.`, "info");
      })],
    ], [...shown.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "AI assistants" })
    : h("p", { class: "muted" }, "No assistants."));
  const fields = (a = {}) => [
    field("Name", "name", { required: true, value: a.name }),
    field("Prompt", "init_prompt", { type: "textarea", required: true, rows: 4, value: a.init_prompt }),
    field("Engine model (provider.model)", "engine_model", { required: true,
      value: a.engine_model ?? "local.gemma3-270m" }),
    field(a.engine_key_set ? "Engine key (write-only; empty keeps the current one)" : "Engine key (write-only)",
      "engine_key", { type: "password", autocomplete: "off" }),
  ];
  const body = (v) => {
    const b = { name: v.name, init_prompt: v.init_prompt, engine_model: v.engine_model.trim() };
    if (v.engine_key) b.engine_key = v.engine_key;
    return b;
  };
  const create = form(fields(), "Create assistant", async (v, f) => {
    const a = await api("POST", "/v1.0/ais", body(v));
    shown.set(a.id, a);
    draw();
    flash(`Assistant ${a.name} created.`, "info");
    f.reset();
  }, { label: "New assistant" });
  // PUT replaces the settings: those the form does not show are sent back as they are.
  const kept = (a) => Object.fromEntries(["detail", "engine_url", "stt_type", "stt_language", "tts_type",
    "tts_voice_id", "vad_config", "tool_names"].filter((k) => a[k] !== undefined).map((k) => [k, a[k]]));
  const change = (a) => editor(edit, `Edit assistant ${a.name}`, fields(a), async (v) => {
    const saved = await api("PUT", `/v1.0/ais/${a.id}`, { ...kept(a), ...body(v) });
    shown.set(a.id, saved);
    draw();
    flash(`Assistant ${saved.name} saved.`, "info");
  });
  main.append(h("h1", {}, "AI assistants"), box, edit, h("h2", {}, "New assistant"), create);
  const page = await list("/v1.0/ais", { page_size: 100 });
  for (const a of page.result) shown.set(a.id, a);
  draw();
}
