// Calls: the list (newest first, a page at a time, filtered by status by the API, kept live over the
// WebSocket), placing a call (optionally with a flow) and a call's page: its status live, its
// event timeline from the audit log, its recordings (played in the page), transcripts, the
// actions its flow executed, and hanging it up.

import { api, currentSession, getCreated, list } from "../api.js";
import { follow } from "../live.js";
import { field, fill, flash, form, h, pager, status, table, when } from "../ui.js";

const STATUSES = ["", "dialing", "ringing", "progressing", "completed", "busy", "no_answer", "failed", "canceled"];

export async function render(main, params) {
  if (params[0]) return detail(main, params[0]);
  const s = currentSession();
  const flows = await list("/v1.0/flows", { page_size: 100 });
  const place = form([
    field("From (E.164)", "source", { placeholder: "+15550001000", required: true, inputmode: "tel" }),
    field("To (E.164, several separated by commas)", "destinations", { placeholder: "+15550002000", required: true, inputmode: "tel" }),
    field("Flow", "flow_id", { options: ["", ...flows.result.map((f) => f.id)] }),
  ], "Place call", async (v) => {
    const body = {
      source: v.source.trim(),
      destinations: v.destinations.split(",").map((d) => d.trim()).filter(Boolean),
    };
    if (v.flow_id) body.flow_id = v.flow_id;
    const r = await api("POST", "/v1.0/calls", body);
    flash(`Placed ${r.calls.length} call(s).`, "info");
    for (const c of r.calls) rows.set(c.id, c);
    draw();
  }, { label: "Place a call" });
  // Flow names for the select (the value stays the id).
  const select = place.querySelector("select[name=flow_id]");
  for (const o of select.options) {
    const f = flows.result.find((x) => x.id === o.value);
    o.textContent = f ? `${f.name} (${f.id.slice(0, 8)})` : "No flow";
  }

  const filter = field("Status", "status", { options: STATUSES });
  const filterSelect = filter.querySelector("select");
  filterSelect.options[0].textContent = "All";
  const box = h("div", { id: "calls" });
  const rows = new Map();
  let next = "";
  const draw = () => {
    const want = filterSelect.value;
    const shown = [...rows.values()]
      .filter((c) => !want || c.status === want)
      .sort((a, b) => (a.id < b.id ? 1 : -1));
    fill(box, 
      table([
        ["To", (c) => h("a", { href: `#/calls/${c.id}` }, c.destination)],
        ["From", (c) => c.source],
        ["Direction", (c) => c.direction],
        ["Status", (c) => status(c.status)],
        ["Duration (s)", (c) => String(c.duration ?? 0)],
        ["Created", (c) => when(c.tm_create)],
      ], shown, { label: "Calls" }),
      shown.length ? null : h("p", { class: "muted" }, "No calls."),
      pager(next, load),
    );
  };
  const load = async (token) => {
    if (!token) rows.clear();
    const page = await list("/v1.0/calls", { page_size: 50, page_token: token, status: filterSelect.value });
    for (const c of page.result) rows.set(c.id, c);
    next = page.next_page_token;
    draw();
  };
  // The API filters (every page of that status), the page keeps live changes in view.
  filterSelect.addEventListener("change", () => load(""));
  main.append(
    h("h1", {}, "Calls"),
    h("h2", {}, "Place a call"),
    place,
    h("h2", {}, "Calls"),
    h("div", { class: "row" }, filter),
    box,
  );
  const stop = follow(`customer_id:${s.customerId}:call:*`, (msg) => {
    if (msg.type === "resync") return load("");
    if (msg.data?.type !== "call") return;
    rows.set(msg.data.id, msg.data);
    draw();
  });
  await load("");
  return stop;
}

async function detail(main, id) {
  const s = currentSession();
  const head = h("div", { id: "call" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const recordings = h("div", { id: "recordings" });
  const transcripts = h("div", { id: "transcripts" });
  const actions = h("div", { id: "executed" });
  let call = null;
  const hangup = h("button", { class: "danger", type: "button", onclick: async () => {
    hangup.disabled = true;
    try {
      call = await api("POST", `/v1.0/calls/${id}/hangup`);
      drawHead();
    } catch (e) {
      flash(e.message);
    } finally {
      hangup.disabled = false;
    }
  } }, "Hang up");
  const drawHead = () => {
    fill(head, 
      h("p", {}, "Status: ", status(call.status), call.hangup_cause ? ` (${call.hangup_cause}, by ${call.hangup_by || "—"})` : ""),
      h("p", {}, `${call.source} → ${call.destination} · ${call.direction} · duration ${call.duration ?? 0} s`),
      ["dialing", "ringing", "progressing"].includes(call.status) ? hangup : null,
    );
  };
  const loadTimeline = async () => {
    const events = await list("/v1.0/events", { resource_type: "call", resource_id: id, page_size: 100 });
    const ordered = [...events.result].sort((a, b) => a.sequence - b.sequence);
    fill(timeline, ...ordered.map((e) =>
      h("li", { "data-event": e.event_type }, h("strong", {}, e.event_type), ` · ${when(e.timestamp)} · by ${e.actor ?? ""}`)));
  };
  const loadMedia = async () => {
    const [recs, flowsOf, trs] = await Promise.all([
      list("/v1.0/recordings", { reference_id: id }),
      list("/v1.0/activeflows", { reference_id: id }),
      list("/v1.0/transcribes", { reference_id: id }),
    ]);
    fill(recordings, recordingList(recs.result));
    const af = flowsOf.result[0];
    fill(actions, af
      ? h("ol", {}, ...(af.executed_actions ?? []).map((a) => h("li", {}, a.type)))
      : h("p", { class: "muted" }, "No flow."));
    const lines = [];
    for (const t of trs.result) {
      const ts = await list("/v1.0/transcripts", { transcribe_id: t.id, page_size: 100 });
      for (const x of ts.result) lines.push(h("li", {}, `[${x.direction}] ${x.message}`));
    }
    fill(transcripts, lines.length ? h("ul", {}, ...lines) : h("p", { class: "muted" }, "No transcripts."));
  };
  call = await getCreated(`/v1.0/calls/${id}`);
  main.append(
    h("h1", {}, "Call ", h("span", { class: "mono" }, id)),
    head,
    h("h2", {}, "Timeline"), timeline,
    h("h2", {}, "Recordings"), recordings,
    h("h2", {}, "Transcripts"), transcripts,
    h("h2", {}, "Flow actions executed"), actions,
    h("p", {}, h("a", { href: "#/calls" }, "All calls")),
  );
  drawHead();
  const stop = follow(`customer_id:${s.customerId}:call:${id}`, async (msg) => {
    if (msg.data?.type === "call") {
      call = msg.data;
      drawHead();
    }
    await loadTimeline();
    if (msg.type === "resync" || ["completed", "busy", "no_answer", "failed", "canceled"].includes(call.status)) {
      // Recordings are stored a moment after the call ends.
      await loadMedia();
      setTimeout(loadMedia, 1500);
    }
  });
  await Promise.all([loadTimeline(), loadMedia()]);
  return stop;
}

/** Recordings with their status, length, error, and a player once stored (a call's or a
 * conference's). */
export function recordingList(recs) {
  return recs.length
    ? h("ul", {}, ...recs.map((r) => h("li", { "data-recording": r.id },
      status(r.status), ` ${Math.round((r.duration_ms ?? 0) / 100) / 10} s `,
      r.status === "ended" && !r.error ? player(r) : null,
      r.error ? h("span", { class: "error" }, r.error) : null)))
    : h("p", { class: "muted" }, "No recordings.");
}

/** An audio player for a stored recording: its file fetched with the session's token. */
function player(r) {
  const button = h("button", { class: "secondary", type: "button" }, "Load audio");
  const box = h("span", {}, button);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const blob = await api("GET", `/v1.0/recordings/${r.id}/file`, undefined, { as: "blob" });
      const audio = h("audio", { controls: true, src: URL.createObjectURL(blob), "aria-label": `Recording ${r.id}` });
      fill(box, audio);
    } catch (e) {
      flash(e.message);
      button.disabled = false;
    }
  });
  return box;
}
