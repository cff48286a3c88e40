// SIP trunks: the customer's carriers with their reachability (the platform's OPTIONS
// keepalives), new, changed and deleted trunks. The password is write-only: never shown, kept
// when left empty on a change.

import { api, list } from "../api.js";
import { editDelete, editor, field, fill, flash, form, h, status, table, when } from "../ui.js";

const CODECS = ["PCMU", "PCMA", "G722", "opus"];

export async function render(main) {
  const box = h("div", { id: "trunk-list" });
  const edit = h("div", { id: "trunk-edit" });
  const shown = new Map();
  const draw = () => fill(box, shown.size
    ? table([
      ["Trunk", (t) => t.name],
      ["Address", (t) => `${t.host}:${t.port} (${t.transport})`],
      ["Codecs", (t) => (t.codecs ?? []).join(", ")],
      ["Reachability", (t) => status(t.reachability)],
      ["Checked", (t) => when(t.tm_reachability)],
      ["", (t) => editDelete(`trunk ${t.name}`, () => change(t), async () => {
        await api("DELETE", `/v1.0/trunks/${t.id}`);
        shown.delete(t.id);
        draw();
        flash(`Trunk ${t.name} deleted.`, "info");
      })],
    ], [...shown.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "Trunks" })
    : h("p", { class: "muted" }, "No trunks."));
  const fields = (t = {}) => [
    field("Name", "name", { required: true, value: t.name }),
    field("Host (DNS name or IP address)", "host", { required: true, value: t.host, placeholder: "sip.carrier.example" }),
    field("Port", "port", { type: "number", min: 1, max: 65535, value: t.port ?? 5060 }),
    field("Transport", "transport", { options: ["udp", "tcp"], value: t.transport }),
    field("Username", "username", { value: t.username, autocomplete: "off" }),
    field(t.password_set ? "Password (write-only; empty keeps the current one)" : "Password (write-only)",
      "password", { type: "password", autocomplete: "new-password" }),
    h("fieldset", {}, h("legend", {}, "Codecs"), ...CODECS.map((c) =>
      h("label", { class: "row" }, h("input", { type: "checkbox", name: "codecs", value: c,
        checked: (t.codecs ?? ["PCMU", "PCMA"]).includes(c) || null }), c))),
  ];
  const body = (v, f) => {
    const b = {
      name: v.name, host: v.host.trim(), port: Number(v.port || 5060), transport: v.transport,
      username: v.username || null,
      codecs: [...f.querySelectorAll("input[name=codecs]:checked")].map((c) => c.value),
    };
    if (v.password) b.password = v.password;
    return b;
  };
  const create = form(fields(), "Create trunk", async (v, f) => {
    const t = await api("POST", "/v1.0/trunks", body(v, f));
    shown.set(t.id, t);
    draw();
    flash(`Trunk ${t.name} created.`, "info");
    f.reset();
  }, { label: "New trunk" });
  const change = (t) => editor(edit, `Edit trunk ${t.name}`, fields(t), async (v, f) => {
    const saved = await api("PUT", `/v1.0/trunks/${t.id}`, body(v, f));
    shown.set(t.id, saved);
    draw();
    flash(`Trunk ${saved.name} saved.`, "info");
  });
  main.append(h("h1", {}, "SIP trunks"), box, edit, h("h2", {}, "New trunk"), create);
  const page = await list("/v1.0/trunks", { page_size: 100 });
  for (const t of page.result) shown.set(t.id, t);
  draw();
}
