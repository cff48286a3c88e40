// The API client: every request the console makes goes through `api`. The session (a
// customer agent's JWT, or the operator's admin token) lives in memory only: a reload logs
// out. A request answered 401, or a JWT past its expiry, ends the session with a message.

let session = null;
let expiryTimer = null;
const expiredListeners = new Set();
let inflight = 0;

/** An API error: the envelope's status, reason and message. */
export class ApiError extends Error {
  constructor(status, reason, message, requestId) {
    super(message);
    this.status = status;
    this.reason = reason;
    this.requestId = requestId;
  }
}

/** The claims of a JWT (not verified: the API does that). */
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

/** Starts a session: `kind` is "customer" (a JWT) or "operator" (the admin token). */
export function startSession(token, kind) {
  const c = kind === "customer" ? claims(token) : null;
  session = { token, kind, customerId: c?.customer_id ?? null, exp: c?.exp ?? null };
  clearTimeout(expiryTimer);
  if (session.exp) {
    const ms = session.exp * 1000 - Date.now();
    expiryTimer = setTimeout(() => expire("Your session has expired. Log in again."), Math.max(ms, 0));
  }
  return session;
}

/** The session, or null. */
export function currentSession() {
  return session;
}

/** Ends the session (logging out). */
export function endSession() {
  session = null;
  clearTimeout(expiryTimer);
}

/** Calls `f(message)` when the session ends on its own (expiry, 401). */
export function onExpired(f) {
  expiredListeners.add(f);
}

function expire(message) {
  if (!session) return;
  endSession();
  for (const f of expiredListeners) f(message);
}

function busy(delta) {
  inflight += delta;
  const bar = document.getElementById("progress");
  if (bar) bar.hidden = inflight === 0;
}

/**
 * Calls the API: `method` `path` with an optional JSON `body` (or a Blob/string for `raw`
 * bodies with their own content type). Returns the parsed JSON (or a Blob with `as: "blob"`);
 * throws an ApiError with the envelope's message otherwise.
 */
export async function api(method, path, body, opts = {}) {
  const headers = {};
  if (session) headers.Authorization = `Bearer ${session.token}`;
  let payload;
  if (body !== undefined && opts.contentType) {
    headers["Content-Type"] = opts.contentType;
    payload = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  busy(1);
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload });
  } catch (e) {
    throw new ApiError(0, "unreachable", `The platform could not be reached (${e.message}).`);
  } finally {
    busy(-1);
  }
  if (res.status === 401 && session && !opts.login) {
    expire("Your session has expired or was revoked. Log in again.");
    throw new ApiError(401, "unauthenticated", "Not logged in.");
  }
  if (!res.ok) {
    let env = null;
    try {
      env = (await res.json()).error;
    } catch {
      // Not the envelope (a proxy's page): the status says it.
    }
    throw new ApiError(
      res.status,
      env?.reason ?? "error",
      env?.message ?? `The request failed (HTTP ${res.status}).`,
      env?.request_id,
    );
  }
  if (opts.as === "blob") return res.blob();
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

/** GET a list page: `{result, next_page_token}`. */
export function list(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const qs = q.toString();
  return api("GET", qs ? `${path}${path.includes("?") ? "&" : "?"}${qs}` : path);
}

/**
 * GET `path`, waiting up to 3 s while it is not found: a resource this page just created can
 * reach the query API's read model a moment after the command's answer.
 */
export async function getCreated(path) {
  const until = Date.now() + 3000;
  for (let wait = 50; ; wait = Math.min(wait * 2, 500)) {
    try {
      return await api("GET", path);
    } catch (e) {
      if (e.status !== 404 || Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}
