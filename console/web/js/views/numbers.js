// Numbers: the customer's phone numbers and the flow each runs for incoming calls; new
// numbers; deleting one.

import { api, list } from "../api.js";
import { actionButton, field, fill, flash, form, h, table, when } from "../ui.js";

export async function render(main) {
  const flows = await list("/v1.0/flows", { page_size: 100 });
  const flowName = (id) => flows.result.find((f) => f.id === id)?.name ?? id ?? "";
  const box = h("div", { id: "number-list" });
  const shown = new Map();
  const draw = () => fill(box, shown.size
    ? table([
      ["Number", (n) => n.number],
      ["Flow", (n) => flowName(n.call_flow_id)],
      ["Created", (n) => when(n.tm_create)],
      ["", (n) => actionButton("Delete", { class: "danger", "aria-label": `Delete ${n.number}` }, async () => {
        await api("DELETE", `/v1.0/numbers/${n.id}`);
        shown.delete(n.id);
        draw();
        flash(`${n.number} deleted.`, "info");
      })],
    ], [...shown.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "Numbers" })
    : h("p", { class: "muted" }, "No numbers."));
  const create = form([
    field("Number (E.164)", "number", { required: true, placeholder: "+15550009000", inputmode: "tel" }),
    field("Flow for incoming calls", "call_flow_id", { options: flows.result.map((f) => f.id), required: true }),
  ], "Add number", async (v, f) => {
    const n = await api("POST", "/v1.0/numbers", { number: v.number.trim(), call_flow_id: v.call_flow_id });
    shown.set(n.id, n);
    draw();
    flash(`${n.number} added.`, "info");
    f.reset();
  }, { label: "New number" });
  for (const o of create.querySelector("[name=call_flow_id]").options) o.textContent = flowName(o.value);
  main.append(h("h1", {}, "Numbers"), box, h("h2", {}, "New number"),
    flows.result.length ? create : h("p", { class: "muted" }, "Create a flow first: a number runs one."));
  const page = await list("/v1.0/numbers", { page_size: 100 });
  for (const n of page.result) shown.set(n.id, n);
  draw();
}
