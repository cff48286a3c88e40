// Queues and agents: queues with their live statistics (waiting, serving, served, abandoned),
// new queues, agents with their live status (set here), their addresses, new agents.

import { api, currentSession, list } from "../api.js";
import { follow } from "../live.js";
import { field, fill, flash, form, h, status, table } from "../ui.js";

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
    ], [...agents.values()].sort((a, b) => (a.id < b.id ? 1 : -1)), { label: "Agents" })
    : h("p", { class: "muted" }, "No agents."));

  const agentOptions = () => [...agents.values()].map((a) =>
    h("label", { class: "row" }, h("input", { type: "checkbox", name: "agent_ids", value: a.id }), a.username));
  const newQueue = form([
    field("Name", "name", { required: true }),
    field("Routing", "routing_method", { options: ["ringall", "linear"] }),
    h("fieldset", {}, h("legend", {}, "Agents"), ...agentOptions()),
    field("Longest wait (ms, empty: the default)", "wait_timeout_ms", { type: "number", min: 1000 }),
    field("Wait music flow", "wait_flow_id", { options: ["", ...flows.result.map((f) => f.id)] }),
  ], "Create queue", async (v, f) => {
    const body = {
      name: v.name, routing_method: v.routing_method,
      agent_ids: [...f.querySelectorAll("input[name=agent_ids]:checked")].map((c) => c.value),
    };
    if (v.wait_timeout_ms) body.wait_timeout_ms = Number(v.wait_timeout_ms);
    if (v.wait_flow_id) body.wait_flow_id = v.wait_flow_id;
    const q = await api("POST", "/v1.0/queues", body);
    queues.set(q.id, q);
    drawQueues();
    flash("Queue created.", "info");
    f.reset();
  }, { label: "New queue" });
  for (const o of newQueue.querySelector("[name=wait_flow_id]").options) {
    const fl = flows.result.find((x) => x.id === o.value);
    o.textContent = fl ? fl.name || fl.id : "No wait music";
  }

  const newAgent = form([
    field("Username", "username", { required: true, autocomplete: "off" }),
    field("Password", "password", { type: "password", required: true, autocomplete: "new-password" }),
    field("Name", "name"),
    field("Permission", "permission", { options: ["agent", "admin"] }),
    field("Addresses (E.164, separated by commas)", "addresses", { placeholder: "+15550003000" }),
  ], "Create agent", async (v, f) => {
    const body = { username: v.username, password: v.password, name: v.name, permission: v.permission };
    const addresses = v.addresses.split(",").map((x) => x.trim()).filter(Boolean);
    if (addresses.length) body.addresses = addresses.map((target) => ({ type: "tel", target }));
    const a = await api("POST", "/v1.0/agents", body);
    agents.set(a.id, a);
    drawAgents();
    flash("Agent created.", "info");
    f.reset();
  }, { label: "New agent" });

  main.append(
    h("h1", {}, "Queues and agents"),
    h("h2", {}, "Queues"), queuesBox,
    h("h2", {}, "New queue"), newQueue,
    h("h2", {}, "Agents"), agentsBox,
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
