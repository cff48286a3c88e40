// Webhooks: where events are sent (URI, method), the signing secret (hidden until shown,
// rotated on request) and the deliveries with their status and attempts, failed ones retried.

import { api, list } from "../api.js";
import { actionButton, field, fill, flash, form, h, pager, status, table, when } from "../ui.js";

export async function render(main) {
  let customer = await api("GET", "/v1.0/customer");
  const secret = h("code", { id: "webhook-secret" }, "••••••••");
  let shown = false;
  const reveal = h("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Show secret");
  reveal.addEventListener("click", () => {
    shown = !shown;
    secret.textContent = shown ? customer.webhook_secret : "••••••••";
    reveal.textContent = shown ? "Hide secret" : "Show secret";
    reveal.setAttribute("aria-pressed", String(shown));
  });
  // Rotating asks once more in the page (no browser dialog).
  const confirmRotate = h("button", { type: "button", class: "danger", hidden: true }, "Yes, rotate it");
  const rotate = h("button", { type: "button", class: "danger", "aria-expanded": "false" }, "Rotate secret");
  rotate.addEventListener("click", () => {
    confirmRotate.hidden = !confirmRotate.hidden;
    rotate.setAttribute("aria-expanded", String(!confirmRotate.hidden));
    if (!confirmRotate.hidden) confirmRotate.focus();
  });
  confirmRotate.addEventListener("click", async () => {
    confirmRotate.disabled = true;
    try {
      // The answer holds the new secret (a read right after could still show the old one).
      customer = await api("POST", "/v1.0/customer/webhook_secret/rotate");
      if (shown) secret.textContent = customer.webhook_secret;
      const until = customer.previous_webhook_secret_valid_until;
      flash(`The webhook secret was rotated: receivers must use the new one${until ? ` (the old one signs too until ${new Date(until).toLocaleString()})` : ""}.`, "info");
      confirmRotate.hidden = true;
      rotate.setAttribute("aria-expanded", "false");
    } catch (e) {
      flash(e.message);
    } finally {
      confirmRotate.disabled = false;
    }
  });
  const settings = form([
    field("Webhook URI", "webhook_uri", { value: customer.webhook_uri ?? "", type: "url", placeholder: "https://example.com/hooks" }),
    field("Method", "webhook_method", { options: ["POST", "PUT", "GET"], value: customer.webhook_method ?? "POST" }),
  ], "Save settings", async (v) => {
    customer = { ...customer, ...(await api("PUT", "/v1.0/customer", { webhook_uri: v.webhook_uri, webhook_method: v.webhook_method })) };
    flash("Webhook settings saved.", "info");
  }, { label: "Webhook settings" });

  const filter = field("Show", "status", { options: ["", "pending", "delivered", "failed"] });
  const filterSelect = filter.querySelector("select");
  filterSelect.options[0].textContent = "All";
  const box = h("div", { id: "deliveries" });
  const load = async (token) => {
    const page = await list("/v1.0/webhook_deliveries", { page_size: 50, status: filterSelect.value, page_token: token });
    fill(box, 
      table([
        ["Event", (d) => d.event_type],
        ["Status", (d) => status(d.status)],
        ["Attempts", (d) => String(d.attempts)],
        ["Last result", (d) => d.last_error ?? (d.last_status_code ? `HTTP ${d.last_status_code}` : "")],
        ["Created", (d) => when(d.tm_create)],
        ["", (d) => d.status === "pending" ? "" : actionButton("Retry", {
          class: "secondary", "aria-label": `Retry delivery of ${d.event_type}`,
        }, async () => {
          await api("POST", `/v1.0/webhook_deliveries/${d.id}/retry`);
          flash("The delivery will be retried.", "info");
          await load("");
        })],
      ], page.result, { label: "Webhook deliveries" }),
      page.result.length ? null : h("p", { class: "muted" }, "No deliveries."),
      pager(page.next_page_token, load),
    );
  };
  filterSelect.addEventListener("change", () => load(""));
  main.append(
    h("h1", {}, "Webhooks"),
    settings,
    h("h2", {}, "Signing secret"),
    h("p", { class: "row" }, secret, reveal, rotate, confirmRotate),
    h("h2", {}, "Deliveries"),
    h("div", { class: "row" }, filter, h("button", { type: "button", class: "secondary", onclick: () => load("") }, "Refresh")),
    box,
  );
  await load("");
}
