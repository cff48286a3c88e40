// Campaigns: outplans (how to dial), outdials (whom: targets, uploaded as CSV with an error
// per bad row), and campaigns (started and stopped here, their counters followed live).

import { api, currentSession, getCreated, list } from "../api.js";
import { follow } from "../live.js";
import { actionButton, field, fill, flash, flashNext, form, h, status, table, when } from "../ui.js";

/** Most rows of one CSV upload. */
const MAX_ROWS = 10000;

export async function render(main, params) {
  if (params[0] === "outdial" && params[1]) return outdial(main, params[1]);
  const s = currentSession();
  const [plans, dials, flows] = await Promise.all([
    list("/v1.0/outplans", { page_size: 100 }),
    list("/v1.0/outdials", { page_size: 100 }),
    list("/v1.0/flows", { page_size: 100 }),
  ]);
  const named = (xs) => ["", ...xs.map((x) => x.id)];
  const label = (select, xs, none) => {
    for (const o of select.options) {
      const x = xs.find((y) => y.id === o.value);
      o.textContent = x ? `${x.name || "(no name)"} (${x.id.slice(0, 8)})` : none;
    }
  };

  const campaignsBox = h("div", { id: "campaign-list" });
  const rows = new Map();
  const draw = () => fill(campaignsBox, rows.size
    ? table([
      ["Campaign", (c) => c.name || "(no name)"],
      ["Status", (c) => status(c.status)],
      ["Progress", (c) => h("progress", { max: Math.max(c.total_targets, 1), value: c.dialed,
        "aria-label": `${c.name}: ${c.dialed} of ${c.total_targets} dialed` })],
      ["Targets", (c) => String(c.total_targets)],
      ["Dialed", (c) => h("span", { "data-counter": "dialed" }, String(c.dialed))],
      ["Answered", (c) => h("span", { "data-counter": "answered" }, String(c.answered))],
      ["Failed", (c) => h("span", { "data-counter": "failed" }, String(c.failed))],
      ["", (c) => actionButton(c.status === "running" ? "Stop" : "Start", {
        class: c.status === "running" ? "danger" : null,
        "aria-label": `${c.status === "running" ? "Stop" : "Start"} campaign ${c.name}`,
      }, async () => {
        const next = c.status === "running" ? "stopped" : "running";
        rows.set(c.id, await api("PUT", `/v1.0/campaigns/${c.id}/status`, { status: next }));
        draw();
      })],
    ], [...rows.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "Campaigns" })
    : h("p", { class: "muted" }, "No campaigns."));
  const loadCampaigns = async () => {
    const page = await list("/v1.0/campaigns", { page_size: 100 });
    for (const c of page.result) rows.set(c.id, c);
    draw();
  };

  const newPlan = form([
    field("Name", "name", { required: true }),
    field("Caller id (E.164)", "source", { required: true, placeholder: "+15550001000" }),
    field("Ring for (ms)", "dial_timeout_ms", { type: "number", min: 1000, value: 30000 }),
    field("Tries per target", "max_try_count", { type: "number", min: 1, value: 1 }),
    field("Between tries (ms)", "try_interval_ms", { type: "number", min: 0, value: 0 }),
  ], "Create outplan", async (v) => {
    await api("POST", "/v1.0/outplans", {
      name: v.name, source: v.source.trim(), dial_timeout_ms: Number(v.dial_timeout_ms),
      max_try_count: Number(v.max_try_count), try_interval_ms: Number(v.try_interval_ms),
    });
    flashNext("Outplan created.");
    window.dispatchEvent(new Event("vbin:refresh"));
  }, { label: "New outplan" });
  const newDial = form([field("Name", "name", { required: true })], "Create outdial", async (v) => {
    const d = await api("POST", "/v1.0/outdials", { name: v.name });
    location.hash = `#/campaigns/outdial/${d.id}`;
  }, { label: "New outdial" });
  const newCampaign = form([
    field("Name", "name", { required: true }),
    field("Outplan", "outplan_id", { options: named(plans.result), required: true }),
    field("Outdial", "outdial_id", { options: named(dials.result), required: true }),
    field("Flow for answered calls", "flow_id", { options: named(flows.result) }),
    field("When the targets run out", "end_handle", { options: ["stop", "continue"] }),
  ], "Create campaign", async (v) => {
    const body = { name: v.name, outplan_id: v.outplan_id, outdial_id: v.outdial_id, end_handle: v.end_handle };
    if (v.flow_id) body.flow_id = v.flow_id;
    const c = await api("POST", "/v1.0/campaigns", body);
    rows.set(c.id, c);
    draw();
    flash("Campaign created: start it from the list.", "info");
  }, { label: "New campaign" });
  label(newCampaign.querySelector("[name=outplan_id]"), plans.result, "Choose an outplan");
  label(newCampaign.querySelector("[name=outdial_id]"), dials.result, "Choose an outdial");
  label(newCampaign.querySelector("[name=flow_id]"), flows.result, "No flow");

  main.append(
    h("h1", {}, "Campaigns"),
    campaignsBox,
    h("h2", {}, "New campaign"), newCampaign,
    h("h2", {}, "Outdials (targets)"),
    dials.result.length
      ? table([
        ["Outdial", (d) => h("a", { href: `#/campaigns/outdial/${d.id}` }, d.name || "(no name)")],
        ["Created", (d) => when(d.tm_create)],
      ], dials.result, { label: "Outdials" })
      : h("p", { class: "muted" }, "No outdials."),
    newDial,
    h("h2", {}, "Outplans"),
    plans.result.length
      ? table([
        ["Outplan", (p) => p.name || "(no name)"],
        ["Caller id", (p) => p.source],
        ["Tries", (p) => String(p.max_try_count)],
      ], plans.result, { label: "Outplans" })
      : h("p", { class: "muted" }, "No outplans."),
    newPlan,
  );
  const stop = follow(`customer_id:${s.customerId}:campaign:*`, (msg) => {
    if (msg.type === "resync") return loadCampaigns();
    if (msg.data?.type !== "campaign") return;
    rows.set(msg.data.id, msg.data);
    draw();
  });
  await loadCampaigns();
  return stop;
}

/** An outdial's targets, and uploading more as CSV. */
async function outdial(main, id) {
  const d = await getCreated(`/v1.0/outdials/${id}`);
  const box = h("div", { id: "targets" });
  const report = h("div", { id: "upload-report", "aria-live": "polite" });
  // What the list showed plus what this page created (the list may lag a moment behind).
  const known = new Map();
  const draw = () => {
    const shown = [...known.values()].sort((a, b) => (a.id < b.id ? 1 : -1));
    fill(box, shown.length
      ? table([
        ["Destinations", (t) => (t.destinations ?? []).map((x) => x.target ?? x).join(", ")],
        ["Status", (t) => status(t.status)],
        ["Tries", (t) => String(t.dial_count ?? 0)],
        ["Variables", (t) => Object.entries(t.variables ?? {}).map(([k, v]) => `${k}=${v}`).join(", ")],
      ], shown, { label: "Targets" })
      : h("p", { class: "muted" }, "No targets yet."));
  };
  const load = async () => {
    const page = await list(`/v1.0/outdials/${id}/targets`, { page_size: 100 });
    for (const t of page.result) known.set(t.id, t);
    draw();
  };
  const upload = form([
    field("CSV file", "file", { type: "file", accept: ".csv,text/csv", required: true }),
  ], "Upload targets", async (_, f) => {
    const file = f.querySelector("input[type=file]").files[0];
    const text = await file.text();
    const rows = parseCsv(text);
    if (rows.length < 2) throw new Error("The file needs a header row and at least one target.");
    if (rows.length - 1 > MAX_ROWS) throw new Error(`At most ${MAX_ROWS} targets per file.`);
    const header = rows[0].map((c) => c.trim());
    const col = header.findIndex((c) => c === "destination" || c === "destinations");
    if (col < 0) throw new Error('The header needs a "destination" column.');
    let ok = 0;
    const errors = [];
    for (let i = 1; i < rows.length; i++) {
      const r = rows[i];
      if (r.length === 1 && r[0].trim() === "") continue;
      const destinations = (r[col] ?? "").split(";").map((x) => x.trim()).filter(Boolean);
      const variables = {};
      header.forEach((name, j) => {
        if (j !== col && name) variables[name] = r[j] ?? "";
      });
      try {
        const t = await api("POST", `/v1.0/outdials/${id}/targets`, { destinations, variables });
        known.set(t.id, t);
        ok++;
      } catch (e) {
        errors.push([i + 1, e.message]);
      }
    }
    fill(report,
      h("p", { role: "status" }, `${ok} target(s) added, ${errors.length} row(s) refused.`),
      errors.length ? h("ul", { class: "row-errors" }, ...errors.map(([line, m]) =>
        h("li", { class: "error", "data-line": line }, `Line ${line}: ${m}`))) : null);
    f.reset();
    await load();
  }, { label: "Upload targets" });
  main.append(
    h("h1", {}, `Outdial ${d.name || id}`),
    h("p", { class: "muted" }, 'CSV: a header row with a "destination" column (several numbers separated by ";"); every other column becomes a variable of the target.'),
    upload,
    report,
    h("h2", {}, "Targets"),
    box,
    h("p", {}, h("a", { href: "#/campaigns" }, "All campaigns")),
  );
  await load();
}

/** Rows of CSV text (RFC 4180: quoted fields, doubled quotes, CRLF or LF). */
export function parseCsv(text) {
  const rows = [];
  let row = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      row.push(cell);
      cell = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = "";
    } else cell += c;
  }
  if (cell !== "" || row.length) {
    row.push(cell);
    rows.push(row);
  }
  return rows;
}
