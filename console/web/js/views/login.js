// Log in: a customer's agent with username and password (`POST /auth/login` -> JWT), or the
// operator with the platform's admin token (checked with a request only it may make).

import { api, endSession, startSession } from "../api.js";
import { field, fill, form, h } from "../ui.js";

export function render(main, { message, done }) {
  const customer = form([
    field("Username", "username", { autocomplete: "username", required: true }),
    field("Password", "password", { type: "password", autocomplete: "current-password", required: true }),
  ], "Log in", async (v) => {
    const r = await api("POST", "/auth/login", { username: v.username, password: v.password }, { login: true });
    startSession(r.token, "customer");
    done("customer");
  }, { label: "Customer login" });
  const operator = form([
    field("Admin token", "token", { type: "password", autocomplete: "off", required: true }),
  ], "Log in as operator", async (v) => {
    startSession(v.token.trim(), "operator");
    try {
      await api("GET", "/v1.0/platform/status", undefined, { login: true });
    } catch (e) {
      endSession();
      throw e.status === 401 || e.status === 403 ? new Error("That is not the platform's admin token.") : e;
    }
    done("operator");
  }, { label: "Operator login" });
  fill(main,
    h("h1", {}, "Log in"),
    message ? h("p", { class: "flash info", role: "status" }, message) : null,
    customer,
    h("details", {}, h("summary", {}, "Operator (platform admin)"), operator),
  );
  main.querySelector("input")?.focus();
}
