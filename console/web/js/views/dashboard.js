// The dashboard: balance, today's calls and spend, live calls (followed over the WebSocket:
// each call appears when created and leaves when it ends) and running campaigns' progress.

import { api, currentSession, list } from "../api.js";
import { follow } from "../live.js";
import { fill, h, money, status, table, when } from "../ui.js";

const LIVE = new Set(["dialing", "ringing", "progressing"]);
/** Pages of calls read to count today's (newest first; stops at yesterday). */
const TODAY_PAGES = 5;

export async function render(main) {
  const s = currentSession();
  const balance = h("div", { class: "big", id: "balance" }, "…");
  const today = h("div", { class: "big", id: "today-calls" }, "…");
  const spend = h("div", { class: "big", id: "today-spend" }, "…");
  const liveBox = h("div", { id: "live-calls" });
  const campaignsBox = h("div", { id: "campaigns" });
  main.append(
    h("h1", {}, "Dashboard"),
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "Balance"), balance),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Calls today"), today),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Spend today"), spend)),
    h("h2", {}, "Live calls"),
    liveBox,
    h("h2", {}, "Campaigns"),
    campaignsBox,
  );

  // Live calls: the first page's unfinished calls, then every change as it happens.
  const live = new Map();
  const drawLive = () => {
    const rows = [...live.values()].sort((a, b) => (a.id < b.id ? 1 : -1));
    fill(liveBox, rows.length
      ? table([
        ["Call", (c) => h("a", { href: `#/calls/${c.id}` }, c.destination)],
        ["From", (c) => c.source],
        ["Status", (c) => status(c.status)],
        ["Started", (c) => when(c.tm_create)],
      ], rows, { label: "Live calls" })
      : h("p", { class: "muted" }, "No live calls."));
  };
  const stop = follow(`customer_id:${s.customerId}:call:*`, (msg) => {
    if (msg.type !== "event" || msg.data?.type !== "call") return;
    if (LIVE.has(msg.data.status)) live.set(msg.data.id, msg.data);
    else live.delete(msg.data.id);
    drawLive();
  });

  const [account, first, campaigns] = await Promise.all([
    api("GET", "/v1.0/billing_account"),
    list("/v1.0/calls", { page_size: 100 }),
    list("/v1.0/campaigns", { page_size: 50 }),
  ]);
  balance.textContent = money(account.balance_micros);
  for (const c of first.result) if (LIVE.has(c.status) && !live.has(c.id)) live.set(c.id, c);
  drawLive();
  fill(campaignsBox, campaigns.result.length
    ? table([
      ["Campaign", (c) => c.name],
      ["Status", (c) => status(c.status)],
      ["Progress", (c) => h("progress", {
        max: Math.max(c.total_targets, 1), value: c.dialed,
        "aria-label": `${c.name}: ${c.dialed} of ${c.total_targets} dialed`,
      })],
      ["Dialed / answered / failed", (c) => `${c.dialed} / ${c.answered} / ${c.failed}`],
    ], campaigns.result, { label: "Campaigns" })
    : h("p", { class: "muted" }, "No campaigns."));
  countToday(first, today, spend);
  return stop;
}

/** Today's calls (created since local midnight) and spend (billing records since then). */
async function countToday(first, todayEl, spendEl) {
  const midnight = new Date();
  midnight.setHours(0, 0, 0, 0);
  let calls = 0;
  let page = first;
  let more = true;
  for (let i = 0; more && i < TODAY_PAGES; i++) {
    for (const c of page.result) {
      if (new Date(c.tm_create) >= midnight) calls++;
      else more = false;
    }
    if (!more || !page.next_page_token) break;
    page = await list("/v1.0/calls", { page_size: 100, page_token: page.next_page_token });
  }
  todayEl.textContent = more && page.next_page_token ? `${calls}+` : String(calls);
  let spent = 0;
  let bills = await list("/v1.0/billings", { page_size: 100 });
  for (let i = 0; i < TODAY_PAGES; i++) {
    let older = false;
    for (const b of bills.result) {
      if (new Date(b.tm_create) >= midnight) spent += b.amount_micros ?? 0;
      else older = true;
    }
    if (older || !bills.next_page_token) break;
    bills = await list("/v1.0/billings", { page_size: 100, page_token: bills.next_page_token });
  }
  spendEl.textContent = money(spent);
  performance.measure("vbin:dashboard:today", "vbin:show:dashboard");
}
