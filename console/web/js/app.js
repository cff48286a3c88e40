// The console's shell: a hash router (`#/calls/<id>`), the navigation, login and logout.
// Each page is a module's `render(main, params)`, which may return a cleanup function (to stop
// following live topics when the page is left).

import { currentSession, endSession, onExpired } from "./api.js";
import { closeLive } from "./live.js";
import { fill, flash, h, takeFlash } from "./ui.js";
import * as login from "./views/login.js";
import * as dashboard from "./views/dashboard.js";
import * as calls from "./views/calls.js";
import * as flows from "./views/flows.js";
import * as webhooks from "./views/webhooks.js";
import * as keys from "./views/keys.js";
import * as campaigns from "./views/campaigns.js";
import * as operator from "./views/operator.js";
import * as queues from "./views/queues.js";
import * as numbers from "./views/numbers.js";
import * as ais from "./views/ais.js";
import * as conferences from "./views/conferences.js";
import * as trunks from "./views/trunks.js";

const customerPages = [
  ["dashboard", "Dashboard", dashboard.render],
  ["calls", "Calls", calls.render],
  ["flows", "Flows", flows.render],
  ["campaigns", "Campaigns", campaigns.render],
  ["queues", "Queues", queues.render],
  ["conferences", "Conferences", conferences.render],
  ["numbers", "Numbers", numbers.render],
  ["trunks", "Trunks", trunks.render],
  ["ais", "AI", ais.render],
  ["webhooks", "Webhooks", webhooks.render],
  ["accesskeys", "Access keys", keys.render],
];
const operatorPages = [
  ["customers", "Customers", operator.customers],
  ["platform", "Platform", operator.platform],
];

let cleanup = null;
let loginMessage = "";
/** Counts calls of `show`: a page still loading when another was shown must not draw over it. */
let shown = 0;

function route() {
  const [page, ...params] = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return { page: page ?? "", params };
}

function nav(pages, current) {
  const el = document.getElementById("nav");
  fill(el, ...pages.map(([id, label]) =>
    h("a", { href: `#/${id}`, "aria-current": id === current ? "page" : null }, label)));
  const who = document.getElementById("who");
  const s = currentSession();
  fill(who, 
    s ? h("span", {}, s.kind === "operator" ? "Operator" : "Customer") : "",
    s ? h("button", { class: "secondary", type: "button", onclick: logout }, "Log out") : "",
  );
}

/** Shows `hash`'s page (once: setting a new hash shows it through `hashchange`). */
function go(hash) {
  if (location.hash === hash) show();
  else location.hash = hash;
}

function logout() {
  endSession();
  closeLive();
  loginMessage = "You are logged out.";
  go("#/login");
}

/** Runs a page's cleanup, if any: one that fails must not keep the next page from showing. */
function runCleanup(f) {
  try {
    f?.();
  } catch {
    // Nothing to do: the page is gone either way.
  }
}

async function show() {
  const mine = ++shown;
  runCleanup(cleanup);
  cleanup = null;
  const main = document.getElementById("main");
  const s = currentSession();
  let { page, params } = route();
  if (!s) {
    nav([], "");
    // The message stays until the next login: the login page may be shown again before then
    // (a navigation that was under way when the session expired), and must still say why.
    fill(main);
    login.render(main, { message: loginMessage, done: (kind) => {
      loginMessage = "";
      location.hash = kind === "operator" ? "#/customers" : "#/dashboard";
    } });
    if (page !== "login") history.replaceState(null, "", "#/login");
    return;
  }
  const pages = s.kind === "operator" ? operatorPages : customerPages;
  let entry = pages.find(([id]) => id === page);
  if (!entry) {
    entry = pages[0];
    history.replaceState(null, "", `#/${entry[0]}`);
    params = [];
  }
  nav(pages, entry[0]);
  flash(...takeFlash());
  fill(main);
  main.focus();
  // How long a page takes to show its data (`vbin bench`-style measurements read these).
  performance.mark(`vbin:show:${entry[0]}`);
  try {
    const done = (await entry[2](main, params)) ?? null;
    if (mine !== shown) {
      // Another page was shown while this one loaded: its cleanup is not this page's.
      runCleanup(done);
      return;
    }
    cleanup = done;
    performance.measure(`vbin:page:${entry[0]}`, `vbin:show:${entry[0]}`);
  } catch (e) {
    // A page whose requests failed because the session expired meanwhile must not replace
    // the login page (and its message) shown since with its own error.
    if (mine === shown) fill(main, h("p", { class: "error", role: "alert" }, e.message));
  }
}

onExpired((message) => {
  closeLive();
  loginMessage = message;
  go("#/login");
});

window.addEventListener("hashchange", show);
// A page that changed what it shows asks to be shown again (its cleanup runs first).
window.addEventListener("vbin:refresh", show);
show();
