// Conferences: the list with each one's status and members followed live, new conferences,
// stopping one; a conference's page shows its members (who joined, who left and why), starts
// and stops the recording of its mix and plays the recordings.

import { api, currentSession, getCreated, list } from "../api.js";
import { follow } from "../live.js";
import { actionButton, fill, flash, flashNext, form, field, h, status, table, when } from "../ui.js";
import { recordingList } from "./calls.js";

export async function render(main, params) {
  if (params[0]) return detail(main, params[0]);
  const s = currentSession();
  const box = h("div", { id: "conference-list" });
  const shown = new Map();
  const draw = () => fill(box, shown.size
    ? table([
      ["Conference", (c) => h("a", { href: `#/conferences/${c.id}` }, c.name || "(no name)")],
      ["Status", (c) => status(c.status)],
      ["Members", (c) => h("span", { "data-members": "" }, String((c.call_ids ?? []).length))],
      ["Created", (c) => when(c.tm_create)],
      ["", (c) => c.status === "terminated" ? "" : stopButton(c, (x) => {
        shown.set(x.id, x);
        draw();
      })],
    ], [...shown.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "Conferences" })
    : h("p", { class: "muted" }, "No conferences."));
  const create = form([field("Name", "name", { required: true })], "Create conference", async (v) => {
    const c = await api("POST", "/v1.0/conferences", { name: v.name });
    flashNext(`Conference ${c.name} created: calls join it with the conference_join action.`);
    location.hash = `#/conferences/${c.id}`;
  }, { label: "New conference", inline: true });
  main.append(h("h1", {}, "Conferences"), box, h("h2", {}, "New conference"), create);
  const page = await list("/v1.0/conferences", { page_size: 100 });
  for (const c of page.result) shown.set(c.id, c);
  draw();
  return follow(`customer_id:${s.customerId}:conference:*`, (msg) => {
    if (msg.data?.type !== "conference") return;
    shown.set(msg.data.id, msg.data);
    draw();
  });
}

/** Stops conference `c` (its members' flows go on); `done` gets the stopped conference. */
function stopButton(c, done) {
  return actionButton("Stop", { class: "danger", "aria-label": `Stop conference ${c.name}` }, async () => {
    done(await api("POST", `/v1.0/conferences/${c.id}/stop`));
    flash(`Conference ${c.name} stopped.`, "info");
  });
}

/** Waits (up to 10 s, looking every 250 ms) until `done()` resolves to true. */
async function until(done) {
  for (let i = 0; i < 40; i += 1) {
    if (await done()) return;
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function detail(main, id) {
  const s = currentSession();
  const head = h("div", { id: "conference" });
  const members = h("div", { id: "members" });
  const recordings = h("div", { id: "recordings" });
  let conf = await getCreated(`/v1.0/conferences/${id}`);
  let recs = [];
  const recording = () => recs.find((r) => r.status === "recording");
  const drawHead = () => fill(head,
    h("p", {}, "Status: ", status(conf.status), ` · ${(conf.call_ids ?? []).length} member(s) now`),
    conf.status === "terminated" ? null : h("div", { class: "row" },
      recording()
        ? actionButton("Stop recording", { class: "secondary" }, async () => {
          await api("POST", `/v1.0/conferences/${id}/recording_stop`);
          // The file is closed and stored a moment later: the button stays busy until then.
          await until(async () => !(await list("/v1.0/recordings", { reference_id: id, page_size: 100 }))
            .result.some((r) => r.status === "recording"));
          await loadRecordings();
        })
        : actionButton("Start recording", { class: "secondary" }, async () => {
          const r = await api("POST", `/v1.0/conferences/${id}/recording_start`);
          // The list is a read model: it shows the new recording a moment later.
          await until(async () => (await list("/v1.0/recordings", { reference_id: id, page_size: 100 }))
            .result.some((x) => x.id === r.id));
          await loadRecordings();
        }),
      stopButton(conf, (x) => {
        conf = x;
        drawHead();
      })));
  const loadMembers = async () => {
    const page = await list("/v1.0/conferencecalls", { conference_id: id, page_size: 100 });
    fill(members, page.result.length
      ? table([
        ["Call", (m) => h("a", { href: `#/calls/${m.call_id}`, class: "mono" }, m.call_id.slice(0, 8))],
        ["Status", (m) => status(m.status)],
        ["Joined", (m) => when(m.tm_create)],
        ["Left", (m) => m.tm_leave ? `${when(m.tm_leave)} (${m.leave_reason})` : ""],
      ], page.result, { label: "Members" })
      : h("p", { class: "muted" }, "No member has joined yet."));
  };
  const loadRecordings = async () => {
    recs = (await list("/v1.0/recordings", { reference_id: id, page_size: 100 })).result;
    fill(recordings, recordingList(recs));
    drawHead();
  };
  main.append(
    h("h1", {}, "Conference ", conf.name),
    h("p", { class: "mono muted" }, id),
    head,
    h("h2", {}, "Members"), members,
    h("h2", {}, "Recordings of the mix"), recordings,
    h("p", {}, h("a", { href: "#/conferences" }, "All conferences")),
  );
  drawHead();
  const stop = follow(`customer_id:${s.customerId}:conference:${id}`, async (msg) => {
    if (msg.data?.type === "conference") {
      conf = msg.data;
      drawHead();
    }
    // The member rows are read models built from the same event; read them a moment later too.
    await loadMembers();
    setTimeout(loadMembers, 500);
    if (conf.status === "terminated") setTimeout(loadRecordings, 1500);
  });
  await Promise.all([loadMembers(), loadRecordings()]);
  return stop;
}
