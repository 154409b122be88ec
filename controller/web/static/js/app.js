// The dashboard's shell: sign-in, theme, and a router over the URL fragment
// (#/ fleet, #/node/<id>, #/node/<id>/media, #/commands, #/rollouts, #/rollout/<id>). Each page gets a Live connection of its own, closed
// when the page is left: /ws has no unsubscribe, so this keeps a tab's topics to the page
// it shows.

import { setToken } from "./api.js";
import { mountCommands } from "./commands.js";
import { h, replace } from "./dom.js";
import { mountFleet } from "./fleet.js";
import { Live } from "./live.js";
import { mountMedia } from "./media.js";
import { mountNode } from "./node.js";
import { mountRollout, mountRollouts } from "./rollouts.js";

const TOKEN_KEY = "tether.token"; // sessionStorage: the tab's session only
const THEME_KEY = "tether.theme"; // localStorage: a preference, not a secret

const app = document.getElementById("app");
const conn = document.getElementById("conn");
let page = null; // {live, unmount}

function applyTheme(theme) {
  if (theme === "dark" || theme === "light") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

function currentTheme() {
  const set = document.documentElement.dataset.theme;
  if (set) return set;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

document.getElementById("theme").addEventListener("click", () => {
  const next = currentTheme() === "dark" ? "light" : "dark";
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
});
applyTheme(localStorage.getItem(THEME_KEY));

document.getElementById("signout").addEventListener("click", () => signOut());

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  leavePage();
  showSignIn(message);
}

function leavePage() {
  if (page) {
    page.unmount && page.unmount();
    page.live.close();
    page = null;
  }
}

function showSignIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  conn.dataset.state = "idle";
  conn.textContent = "signed out";
  const input = h("input", { type: "password", name: "token", id: "token", required: true,
    autocomplete: "current-password", placeholder: "operator token" });
  const form = h("form", { class: "signin card", on: { submit: (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    route();
  } } },
  h("h1", null, "Sign in"),
  h("p", { class: "muted" }, "Paste an operator token (", h("code", null, "<data-dir>/admin.token"),
    " or one from ", h("code", null, "tether token create"), "). It is kept for this tab only."),
  h("label", { for: "token" }, "Token"), input,
  message ? h("p", { class: "error", role: "alert" }, message) : null,
  h("button", { type: "submit", class: "primary" }, "Sign in"));
  replace(app, form);
  input.focus();
}

function route() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) { showSignIn(); return; }
  setToken(token, () => signOut("The token was refused (401): sign in again."));
  leavePage();
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  const live = new Live({
    token,
    onStatus: (state, detail) => {
      conn.dataset.state = state;
      conn.textContent = state === "live" ? `live · ${detail}` : state;
      conn.title = detail || "";
    },
    onRefused: (code, reason) => {
      if (code === 4401) signOut("The token was refused: sign in again.");
      else conn.title = `refused (${code}): ${reason}`;
    },
  });
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === (parts[0] || "fleet"));
  }
  const root = h("div", { class: "page" });
  replace(app, root);
  let unmount;
  if (parts[0] === "node" && parts[1] && parts[2] === "media") unmount = mountMedia(root, live, parts[1]);
  else if (parts[0] === "node" && parts[1]) unmount = mountNode(root, live, parts[1]);
  else if (parts[0] === "commands") unmount = mountCommands(root, live, parts[1]);
  else if (parts[0] === "rollouts") unmount = mountRollouts(root, live);
  else if (parts[0] === "rollout" && parts[1]) unmount = mountRollout(root, live, parts[1]);
  else unmount = mountFleet(root, live);
  page = { live, unmount };
  live.connect();
}

window.addEventListener("hashchange", route);
route();
