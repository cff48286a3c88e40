// AI assistants: the list and new assistants (name, prompt, engine model; the engine key is
// write-only and never shown).

import { api, list } from "../api.js";
import { field, fill, flash, form, h, table, when } from "../ui.js";

export async function render(main) {
  const box = h("div", { id: "ai-list" });
  const shown = new Map();
  const draw = () => fill(box, shown.size
    ? table([
      ["Assistant", (a) => a.name],
      ["Engine model", (a) => a.engine_model],
      ["Prompt", (a) => (a.init_prompt ?? "").slice(0, 80)],
      ["Created", (a) => when(a.tm_create)],
    ], [...shown.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "AI assistants" })
    : h("p", { class: "muted" }, "No assistants."));
  const create = form([
    field("Name", "name", { required: true }),
    field("Prompt", "init_prompt", { type: "textarea", required: true, rows: 4 }),
    field("Engine model (provider.model)", "engine_model", { required: true, value: "local.gemma3-270m" }),
    field("Engine key (write-only)", "engine_key", { type: "password", autocomplete: "off" }),
  ], "Create assistant", async (v, f) => {
    const body = { name: v.name, init_prompt: v.init_prompt, engine_model: v.engine_model.trim() };
    if (v.engine_key) body.engine_key = v.engine_key;
    const a = await api("POST", "/v1.0/ais", body);
    shown.set(a.id, a);
    draw();
    flash(`Assistant ${a.name} created.`, "info");
    f.reset();
  }, { label: "New assistant" });
  main.append(h("h1", {}, "AI assistants"), box, h("h2", {}, "New assistant"), create);
  const page = await list("/v1.0/ais", { page_size: 100 });
  for (const a of page.result) shown.set(a.id, a);
  draw();
}
