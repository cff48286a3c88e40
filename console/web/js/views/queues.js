// Queues and agents: queues with their live statistics (waiting, serving, served, abandoned),
// new and changed queues, agents with their live status (set here), their addresses, new,
// changed and deleted agents.

import { api, currentSession, list } from "../api.js";
import { follow } from "../live.js";
import { editDelete, editor, field, fill, flash, form, h, status, table } from "../ui.js";

const AGENT_STATUSES = ["available", "busy", "offline"];

export async function render(main) {
  const s = currentSession();
  const [agentsPage, flows] = await Promise.all([
    list("/v1.0/agents", { page_size: 100 }),
    list("/v1.0/flows", { page_size: 100 }),
  ]);
  const agents = new Map(agentsPage.result.map((a) => [a.id, a]));
  const queues = new Map();
  const refetch = new Map();
  const queuesBox = h("div", { id: "queue-list" });
  const agentsBox = h("div", { id: "agent-list" });
  const queueEdit = h("div", { id: "queue-edit" });
  const agentEdit = h("div", { id: "agent-edit" });

  const drawQueues = () => fill(queuesBox, queues.size
    ? table([
      ["Queue", (q) => q.name || "(no name)"],
      ["Routing", (q) => q.routing_method],
      ["Agents", (q) => (q.agent_ids ?? []).map((id) => agents.get(id)?.username ?? id.slice(0, 8)).join(", ")],
      ["Waiting", (q) => h("span", { "data-stat": "waiting" }, String(q.waiting ?? 0))],
      ["Serving", (q) => h("span", { "data-stat": "serving" }, String(q.serving ?? 0))],
      ["Served", (q) => h("span", { "data-stat": "served" }, String(q.served ?? 0))],
      ["Abandoned", (q) => h("span", { "data-stat": "abandoned" }, String(q.abandoned ?? 0))],
      ["Average wait (s)", (q) => String(Math.round((q.average_wait_ms ?? 0) / 100) / 10)],
      ["", (q) => h("button", { type: "button", class: "secondary", "aria-label": `Edit queue ${q.name}`,
        onclick: () => editQueue(q) }, "Edit")],
    ], [...queues.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "Queues" })
    : h("p", { class: "muted" }, "No queues."));

  const drawAgents = () => fill(agentsBox, agents.size
    ? table([
      ["Agent", (a) => `${a.name || a.username} (${a.username})`],
      ["Permission", (a) => a.permission],
      ["Addresses", (a) => (a.addresses ?? []).map((x) => x.target ?? x).join(", ")],
      ["Status", (a) => status(a.status)],
      ["Set status", (a) => {
        const select = h("select", { "aria-label": `Status of ${a.username}` },
          ...AGENT_STATUSES.map((st) => h("option", { value: st, selected: st === a.status || null }, st)));
        select.addEventListener("change", async () => {
          select.disabled = true;
          try {
            agents.set(a.id, await api("PUT", `/v1.0/agents/${a.id}/status`, { status: select.value }));
            drawAgents();
          } catch (e) {
            flash(e.message);
            select.value = a.status;
          } finally {
            select.disabled = false;
          }
        });
        return select;
      }],
      ["", (a) => editDelete(`agent ${a.username}`, () => editAgent(a), async () => {
        await api("DELETE", `/v1.0/agents/${a.id}`);
        agents.delete(a.id);
        drawAgents();
        flash(`Agent ${a.username} deleted.`, "info");
      })],
    ], [...agents.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "Agents" })
    : h("p", { class: "muted" }, "No agents."));

  // The settings of a queue, for a new one (`q` absent) or to change one.
  const queueFields = (q = {}) => {
    const wait = field("Wait music flow", "wait_flow_id", { options: ["", ...flows.result.map((f) => f.id)],
      value: q.wait_flow_id ?? "" });
    for (const o of wait.querySelector("select").options) {
      const fl = flows.result.find((x) => x.id === o.value);
      o.textContent = fl ? fl.name || fl.id : "No wait music";
    }
    return [
      field("Name", "name", { required: true, value: q.name }),
      field("Routing", "routing_method", { options: ["ringall", "linear"], value: q.routing_method }),
      h("fieldset", {}, h("legend", {}, "Agents"), ...[...agents.values()].map((a) =>
        h("label", { class: "row" }, h("input", { type: "checkbox", name: "agent_ids", value: a.id,
          checked: (q.agent_ids ?? []).includes(a.id) || null }), a.username))),
      field("Longest wait (ms, empty: the default)", "wait_timeout_ms", { type: "number", min: 1000,
        value: q.wait_timeout_ms }),
      wait,
    ];
  };
  const queueBody = (v, f) => {
    const body = {
      name: v.name, routing_method: v.routing_method,
      agent_ids: [...f.querySelectorAll("input[name=agent_ids]:checked")].map((c) => c.value),
    };
    if (v.wait_timeout_ms) body.wait_timeout_ms = Number(v.wait_timeout_ms);
    if (v.wait_flow_id) body.wait_flow_id = v.wait_flow_id;
    return body;
  };
  const newQueue = form(queueFields(), "Create queue", async (v, f) => {
    const q = await api("POST", "/v1.0/queues", queueBody(v, f));
    queues.set(q.id, q);
    drawQueues();
    flash("Queue created.", "info");
    f.reset();
  }, { label: "New queue" });
  const editQueue = (q) => editor(queueEdit, `Edit queue ${q.name}`, queueFields(q), async (v, f) => {
    const body = queueBody(v, f);
    // PUT replaces the settings: an emptied field goes back to its default.
    body.wait_flow_id = v.wait_flow_id || null;
    queues.set(q.id, await api("PUT", `/v1.0/queues/${q.id}`, body));
    drawQueues();
    flash(`Queue ${body.name} saved.`, "info");
  });

  const addresses = (text) => text.split(",").map((x) => x.trim()).filter(Boolean)
    .map((target) => ({ type: "tel", target }));
  const agentFields = (a = {}) => [
    field("Name", "name", { value: a.name }),
    field("Permission", "permission", { options: ["agent", "admin"], value: a.permission }),
    field("Addresses (E.164, separated by commas)", "addresses", { placeholder: "+15550003000",
      value: (a.addresses ?? []).map((x) => x.target ?? x).join(", ") }),
  ];
  const newAgent = form([
    field("Username", "username", { required: true, autocomplete: "off" }),
    field("Password", "password", { type: "password", required: true, autocomplete: "new-password" }),
    ...agentFields(),
  ], "Create agent", async (v, f) => {
    const body = { username: v.username, password: v.password, name: v.name, permission: v.permission };
    const addrs = addresses(v.addresses);
    if (addrs.length) body.addresses = addrs;
    const a = await api("POST", "/v1.0/agents", body);
    agents.set(a.id, a);
    drawAgents();
    flash("Agent created.", "info");
    f.reset();
  }, { label: "New agent" });
  const editAgent = (a) => editor(agentEdit, `Edit agent ${a.username}`, agentFields(a), async (v) => {
    const saved = await api("PUT", `/v1.0/agents/${a.id}`,
      { name: v.name || a.username, permission: v.permission, addresses: addresses(v.addresses) });
    agents.set(a.id, saved);
    drawAgents();
    flash(`Agent ${a.username} saved.`, "info");
  });

  main.append(
    h("h1", {}, "Queues and agents"),
    h("h2", {}, "Queues"), queuesBox, queueEdit,
    h("h2", {}, "New queue"), newQueue,
    h("h2", {}, "Agents"), agentsBox, agentEdit,
    h("h2", {}, "New agent"), newAgent,
  );
  const page = await list("/v1.0/queues", { page_size: 100 });
  for (const q of page.result) queues.set(q.id, q);
  drawQueues();
  drawAgents();
  const stops = [
    follow(`customer_id:${s.customerId}:queue:*`, (msg) => {
      if (msg.data?.type !== "queue") return;
      queues.set(msg.data.id, msg.data);
      drawQueues();
    }),
    // A queue call's events carry the queue call; the queue's statistics are read again.
    follow(`customer_id:${s.customerId}:queuecall:*`, (msg) => {
      const id = msg.data?.queue_id;
      if (msg.data?.type !== "queuecall" || !id) return;
      // Twice: the read model may apply the event a moment after it is pushed.
      for (const t of refetch.get(id) ?? []) clearTimeout(t);
      const read = async () => {
        try {
          queues.set(id, await api("GET", `/v1.0/queues/${id}`));
          drawQueues();
        } catch (e) {
          flash(e.message);
        }
      };
      refetch.set(id, [setTimeout(read, 150), setTimeout(read, 1000)]);
    }),
    follow(`customer_id:${s.customerId}:agent:*`, (msg) => {
      if (msg.data?.type !== "agent") return;
      agents.set(msg.data.id, msg.data);
      drawAgents();
    }),
  ];
  return () => stops.forEach((f) => f());
}
