// The operator's view (the platform's admin token): customers with their balance and a
// top-up, and the platform's health: /readyz's parts, how far the relay is behind the event
// log, where each projection is, parked events and the webhook backlog.

import { api, list } from "../api.js";
import { fill, flash, h, money, pager, status, table, when } from "../ui.js";

export async function customers(main) {
  const box = h("div", { id: "customers" });
  const load = async (token) => {
    const page = await list("/v1.0/customers", { page_size: 50, page_token: token });
    fill(box,
      table([
        ["Customer", (c) => c.name],
        ["Id", (c) => h("span", { class: "mono" }, c.id)],
        ["Status", (c) => status(c.status ?? "active")],
        ["Balance", (c) => h("span", { "data-balance": c.id }, money(c.balance_micros))],
        ["Top up", (c) => topUp(c)],
      ], page.result, { label: "Customers" }),
      page.result.length ? null : h("p", { class: "muted" }, "No customers."),
      pager(page.next_page_token, load));
  };
  main.append(h("h1", {}, "Customers"), box);
  await load("");
}

/** A top-up form for customer `c` (dollars, kept exact as micros). */
function topUp(c) {
  const input = h("input", { name: "amount", inputmode: "decimal", size: 8, placeholder: "10.00",
    "aria-label": `Amount to add to ${c.name}, in dollars` });
  const button = h("button", { type: "submit", class: "secondary" }, "Add");
  const f = h("form", { class: "inline", "aria-label": `Top up ${c.name}` }, input, button);
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const m = /^(\d{1,9})(?:\.(\d{1,6}))?$/.exec(input.value.trim());
    if (!m) {
      flash("Enter an amount in dollars, like 10 or 2.50.");
      input.focus();
      return;
    }
    const micros = Number(m[1]) * 1e6 + Number((m[2] ?? "").padEnd(6, "0"));
    button.disabled = true;
    try {
      const account = await api("POST", `/v1.0/customers/${c.id}/balance_add`, { amount_micros: micros });
      const shown = document.querySelector(`[data-balance="${c.id}"]`);
      if (shown && account?.balance_micros !== undefined) shown.textContent = money(account.balance_micros);
      flash(`Added ${money(micros)} to ${c.name}.`, "info");
      input.value = "";
    } catch (ex) {
      flash(ex.message);
    } finally {
      button.disabled = false;
    }
  });
  return f;
}

export async function platform(main) {
  const [ready, st] = await Promise.all([
    fetch("/readyz").then((r) => r.json()).catch(() => ({ ready: false })),
    api("GET", "/v1.0/platform/status"),
  ]);
  const yes = (ok) => h("span", { class: `status ${ok ? "completed" : "failed"}` }, ok ? "up" : "down");
  main.append(
    h("h1", {}, "Platform"),
    h("div", { class: "cards", id: "readiness" },
      ...["postgres", "nats", "redis"].map((p) =>
        h("div", { class: "card" }, h("div", { class: "muted" }, p), yes(ready[p]))),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Event log head"), h("div", { class: "big" }, String(st.log_head)))),
    h("h2", {}, "Relay"),
    table([
      ["Relay", (r) => r.name],
      ["Position", (r) => String(r.global_position)],
      ["Behind", (r) => String(r.behind)],
      ["Updated", (r) => when(r.tm_update)],
    ], st.relays, { label: "Relay positions" }),
    h("h2", {}, "Projections"),
    table([
      ["Projection", (p) => p.name],
      ["Last position", (p) => h("span", { "data-position": p.name }, String(p.global_position))],
      ["Events applied", (p) => String(p.events_applied)],
      ["Updated", (p) => when(p.tm_update)],
    ], st.projections, { label: "Projections" }),
    h("h2", {}, `Parked events (${st.dead_letters.total})`),
    st.dead_letters.latest.length
      ? table([
        ["Projection", (d) => d.projection],
        ["Event", (d) => d.event_type ?? ""],
        ["Error", (d) => d.error],
        ["When", (d) => when(d.tm_create)],
      ], st.dead_letters.latest, { label: "Parked events" })
      : h("p", { class: "muted" }, "None."),
    h("h2", {}, "Webhook backlog"),
    h("p", { id: "webhook-backlog" },
      `Pending: ${st.webhook_deliveries.pending ?? 0} · failed: ${st.webhook_deliveries.failed ?? 0}`),
  );
}
