// Log in: a customer's agent with username and password (`POST /auth/login` -> JWT).

import { api, startSession } from "../api.js";
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
  fill(main,
    h("h1", {}, "Log in"),
    message ? h("p", { class: "flash info", role: "status" }, message) : null,
    customer,
  );
  main.querySelector("input")?.focus();
}
