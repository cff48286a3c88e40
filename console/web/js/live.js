// Live updates over the API's WebSocket (`/v1.0/ws`): pages subscribe to topics
// (`customer_id:<id>:call:*`) and get each event's resource. One connection per session,
// reconnected with backoff; subscriptions are sent again after a reconnect (pages reload what
// they show when told `resync`).

import { currentSession } from "./api.js";

let socket = null;
let retry = 0;
let token = null;
const subs = new Map(); // topic -> Set of handlers

function topicMatches(pattern, topic) {
  if (pattern === topic) return true;
  return pattern.endsWith(":*") && topic.startsWith(pattern.slice(0, -1));
}

function connect() {
  const s = currentSession();
  if (!s || s.kind !== "customer") return;
  token = s.token;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${proto}//${location.host}/v1.0/ws?token=${encodeURIComponent(token)}`);
  socket.onopen = () => {
    retry = 0;
    if (subs.size) socket.send(JSON.stringify({ type: "subscribe", topics: [...subs.keys()] }));
    for (const [, hs] of subs) for (const h of hs) h({ type: "resync" });
  };
  socket.onmessage = (m) => {
    let msg;
    try {
      msg = JSON.parse(m.data);
    } catch {
      return;
    }
    if (msg.type !== "event") return;
    for (const [pattern, hs] of subs) {
      if (topicMatches(pattern, msg.topic)) for (const h of hs) h(msg);
    }
  };
  socket.onclose = () => {
    socket = null;
    const still = currentSession();
    if (!still || still.token !== token) return;
    retry = Math.min(retry + 1, 6);
    setTimeout(connect, 250 * 2 ** retry);
  };
}

/** Follows `topic`; `handler(msg)` gets each push. Returns the unsubscribe function. */
export function follow(topic, handler) {
  if (!subs.has(topic)) {
    subs.set(topic, new Set());
    if (socket?.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "subscribe", topics: [topic] }));
    }
  }
  subs.get(topic).add(handler);
  if (!socket) connect();
  return () => {
    const hs = subs.get(topic);
    if (!hs) return;
    hs.delete(handler);
    if (hs.size === 0) {
      subs.delete(topic);
      if (socket?.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "unsubscribe", topics: [topic] }));
      }
    }
  };
}

/** Closes the connection (logout). */
export function closeLive() {
  subs.clear();
  token = null;
  if (socket) socket.close();
  socket = null;
}
