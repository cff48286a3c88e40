// Access keys: the list, a new key (its token shown once, with a copy button) and deletion.

import { api, list } from "../api.js";
import { actionButton, field, fill, flash, form, h, table, when } from "../ui.js";

export async function render(main) {
  const box = h("div", { id: "accesskeys" });
  const created = h("div", { id: "new-key", "aria-live": "polite" });
  const load = async () => {
    const keys = await list("/v1.0/accesskeys", { page_size: 100 });
    fill(box, keys.result.length
      ? table([
        ["Name", (k) => k.name],
        ["Expires", (k) => when(k.tm_expire) || "never"],
        ["Created", (k) => when(k.tm_create)],
        ["", (k) => actionButton("Delete", { class: "danger", "aria-label": `Delete key ${k.name}` }, async () => {
          await api("DELETE", `/v1.0/accesskeys/${k.id}`);
          flash(`Key ${k.name} deleted.`, "info");
          await load();
        })],
      ], keys.result, { label: "Access keys" })
      : h("p", { class: "muted" }, "No access keys."));
  };
  const make = form([
    field("Name", "name", { required: true }),
    field("Expires after (seconds, empty: never)", "expire_sec", { type: "number", min: 1 }),
  ], "Create key", async (v, f) => {
    const body = { name: v.name };
    if (v.expire_sec) body.expire_sec = Number(v.expire_sec);
    const k = await api("POST", "/v1.0/accesskeys", body);
    const token = h("code", { id: "new-key-token" }, k.token);
    const copy = h("button", { type: "button", class: "secondary", onclick: async () => {
      try {
        await navigator.clipboard.writeText(k.token);
        flash("Token copied.", "info");
      } catch {
        flash("Copying is not allowed here: select the token and copy it.");
      }
    } }, "Copy");
    fill(created, h("p", {}, "This token is shown once: keep it now. "), h("p", { class: "row" }, token, copy));
    f.reset();
    await load();
  }, { label: "New access key" });
  main.append(h("h1", {}, "Access keys"), make, created, h("h2", {}, "Keys"), box);
  await load();
}
