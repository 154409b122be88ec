// The rollouts pages (issue 15; docs/protocol.md "Rollouts"): #/rollouts lists them (id,
// bundle, version, state, ring progress), #/rollout/<id> shows one (state, its why, the
// rings, each node's state/version/reason) with pause/resume/abort for operators.
//
// Both are live over /ws: the list on `rollouts` (snapshot {items}, then `rollout.updated`
// heads {rollout_id, state, why, ring (index), counts, bundle, version}), a rollout on
// `rollout:<id>` (snapshot: its GET view; events: the head plus the nodes that changed,
// merged into the view). `waiting` and each node's `connected` come only with GET: the
// page re-reads the view after events, at most once a second. Everything from the network
// becomes text (dom.js); a why is shown as its JSON, never interpreted.

import { enc, get, post } from "./api.js";
import { h, replace, setText } from "./dom.js";
import { ago, parseTime, text } from "./format.js";

const FINAL = new Set(["completed", "halted", "aborted"]);
const REFRESH_MS = 1000;

function ringName(view, index) {
  const ring = (view.rings || [])[index];
  return ring && typeof ring.name === "string" ? ring.name : null;
}

/** "ring 1/2 canary" (1-based for people); "done" once completed. */
function progress(view) {
  const total = (view.rings || []).length;
  const ring = view.ring || {};
  if (view.state === "completed") return `all ${total} ring${total === 1 ? "" : "s"} done`;
  const index = typeof ring.index === "number" ? ring.index : 0;
  return `ring ${Math.min(index + 1, total)}/${total}${ring.name ? ` ${ring.name}` : ""}`;
}

function counts(view) {
  return Object.entries(view.counts || {}).map(([k, v]) => `${v} ${k}`).join(" · ") || "—";
}

/** A rollout.updated head merged into a view (ring arrives as an index). */
function mergeHead(view, head) {
  const out = { ...view };
  for (const k of ["state", "why", "counts", "bundle", "version"]) if (k in head) out[k] = head[k];
  if (head.ring && typeof head.ring === "object") out.ring = head.ring;
  if (Array.isArray(out.rings) && out.ring) {
    out.rings = out.rings.map((r, i) => ({ ...r, stage: i < out.ring.index || out.state === "completed"
      ? "done" : i === out.ring.index ? "current" : "waiting" }));
  }
  return out;
}

/** A why (or waiting) as one readable line: check, nodes, figures; the JSON stays below. */
function whyLine(why) {
  if (!why || typeof why !== "object") return "—";
  const parts = [`check: ${text(why.check)}`];
  if (Array.isArray(why.nodes) && why.nodes.length) parts.push(`nodes: ${why.nodes.join(", ")}`);
  if (why.figures && typeof why.figures === "object") {
    const figs = Object.entries(why.figures).map(([k, v]) => `${k} ${text(v)}`).join(", ");
    if (figs) parts.push(figs);
  }
  if (why.actor) parts.push(`by ${text(why.actor)}`);
  return parts.join(" · ");
}

export function mountRollouts(root, live) {
  const items = new Map(); // rollout_id -> list view
  const rowsEl = h("tbody");
  const total = h("span", { class: "muted" });
  let frame = 0;
  replace(root,
    h("div", { class: "toolbar" }, h("h1", null, "Rollouts"), total),
    h("section", { class: "card" }, h("table", { class: "rollouts" },
      h("thead", null, h("tr", null, ["Rollout", "Bundle", "Version", "State", "Progress", "Nodes", "Created"].map((c) => h("th", null, c)))),
      rowsEl)));

  function schedule() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
  }

  function render() {
    const list = [...items.values()].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    setText(total, `${list.length} recent`);
    replace(rowsEl, list.length ? list.map((r) => h("tr", { dataset: { rolloutId: r.rollout_id, state: r.state } },
      h("td", { class: "mono" }, h("a", { href: `#/rollout/${enc(r.rollout_id)}` }, r.rollout_id)),
      h("td", null, text(r.bundle)),
      h("td", null, text(r.version)),
      h("td", null, h("span", { class: `badge ${r.state}` }, text(r.state))),
      h("td", { dataset: { progress: "" } }, progress(r)),
      h("td", { class: "muted" }, counts(r)),
      h("td", { class: "muted" }, r.created_at ? `${ago(parseTime(r.created_at))} ago` : "—")))
      : h("tr", null, h("td", { colspan: 7, class: "muted" }, "No rollouts yet: tether rollout start ...")));
  }

  live.subscribe(["rollouts"], {
    snapshot(data) {
      items.clear();
      for (const r of (data && data.items) || []) items.set(r.rollout_id, r);
      schedule();
    },
    event(_kind, head) {
      if (!head || typeof head.rollout_id !== "string") return;
      const known = items.get(head.rollout_id);
      if (known) { items.set(head.rollout_id, mergeHead(known, head)); schedule(); return; }
      get(`/api/v1/rollouts/${enc(head.rollout_id)}`).then((view) => {
        delete view.nodes;
        items.set(view.rollout_id, view);
        schedule();
      }).catch(() => {});
    },
  });
  return () => { if (frame) cancelAnimationFrame(frame); };
}

export function mountRollout(root, live, rolloutId) {
  let view = null;
  let frame = 0;
  let refreshTimer = 0;
  let lastRefresh = 0;
  const head = h("div", { class: "toolbar" });
  const summary = h("section", { class: "card" });
  const ringsEl = h("section", { class: "card" });
  const nodesEl = h("tbody");
  const actionMsg = h("span", { class: "muted", role: "status", dataset: { rolloutMessage: "" } });
  replace(root,
    h("div", { class: "toolbar" }, h("a", { href: "#/rollouts", class: "back" }, "← rollouts")),
    head, summary, ringsEl,
    h("section", { class: "card" }, h("h2", null, "Nodes"), h("table", { class: "rollout-nodes" },
      h("thead", null, h("tr", null, ["Node", "Ring", "State", "Version", "Active", "Connected", "Reason", "Rollback"].map((c) => h("th", null, c)))),
      nodesEl)));

  function schedule() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
  }

  // GET brings what events lack (waiting, connected, finished_at): at most once a second
  function refresh() {
    if (refreshTimer) return;
    const wait = Math.max(0, lastRefresh + REFRESH_MS - Date.now());
    refreshTimer = setTimeout(() => {
      refreshTimer = 0;
      lastRefresh = Date.now();
      get(`/api/v1/rollouts/${enc(rolloutId)}`).then((fresh) => { view = fresh; schedule(); }).catch(() => {});
    }, wait);
  }

  async function act(action) {
    setText(actionMsg, `${action}...`);
    try {
      const { data } = await post(`/api/v1/rollouts/${enc(rolloutId)}/${action}`);
      view = data;
      setText(actionMsg, `${action}: done`);
      schedule();
    } catch (err) {
      setText(actionMsg, `${action} refused: ${err.message}`);
    }
  }

  function buttons() {
    const operator = live.role === "operator" || live.role === "admin";
    if (!operator || !view || FINAL.has(view.state)) return actionMsg;
    const running = view.state === "running";
    return [
      h("button", { type: "button", dataset: { rolloutAction: running ? "pause" : "resume" },
        on: { click: () => act(running ? "pause" : "resume") } }, running ? "Pause" : "Resume"),
      h("button", { type: "button", class: "danger", dataset: { rolloutAction: "abort" },
        on: { click: () => act("abort") } }, "Abort"),
      actionMsg];
  }

  function render() {
    if (!view) {
      replace(head, h("h1", { class: "mono" }, rolloutId), h("span", { class: "muted" }, "loading..."));
      return;
    }
    replace(head, h("h1", { class: "mono" }, view.rollout_id),
      h("span", { class: `badge ${view.state}`, dataset: { rolloutState: view.state } }, text(view.state)),
      h("span", { class: "muted", dataset: { progress: "" } }, progress(view)), buttons());
    replace(summary, h("dl", { class: "kv" },
      h("dt", null, "Bundle"), h("dd", null, `${text(view.bundle)} ${text(view.version)}`),
      h("dt", null, "Counts"), h("dd", null, counts(view)),
      h("dt", null, "On failure"), h("dd", null, `${text(view.on_failure)} (threshold ${text(view.failure_threshold)}, max unavailable ${text(view.max_unavailable)}, probation ${text(view.probation_s)} s)`),
      h("dt", null, "Started by"), h("dd", { dataset: { rolloutActor: "" } }, text(view.actor)),
      h("dt", null, "Created"), h("dd", null, text(view.created_at)),
      h("dt", null, "Finished"), h("dd", null, text(view.finished_at)),
      h("dt", null, "Why"), h("dd", { dataset: { rolloutWhy: "" } }, whyLine(view.why),
        view.why ? h("pre", { class: "output" }, JSON.stringify(view.why, null, 2)) : null),
      view.state === "running" && view.waiting ? [h("dt", null, "Waiting"), h("dd", { dataset: { rolloutWaiting: "" } },
        whyLine(view.waiting), Array.isArray(view.waiting.not_connected) && view.waiting.not_connected.length
          ? ` · not connected: ${view.waiting.not_connected.join(", ")}` : "")] : null));
    replace(ringsEl, h("h2", null, "Rings"), h("ol", { class: "timeline-list" }, (view.rings || []).map((r) =>
      h("li", { dataset: { ring: r.name, stage: r.stage } },
        h("span", { class: `badge ${r.stage === "done" ? "succeeded" : r.stage === "current" ? "running" : "pending"}` }, text(r.stage)),
        " ", text(r.name), " ",
        h("span", { class: "muted" }, Array.isArray(r.nodes) ? `nodes ${r.nodes.join(", ")}` : `${text(r.percent)} %`,
          typeof r.size === "number" ? ` · ${r.size} node${r.size === 1 ? "" : "s"}` : "")))));
    const nodes = Object.entries(view.nodes || {}).sort((a, b) => (a[1].ring - b[1].ring) || a[0].localeCompare(b[0]));
    replace(nodesEl, nodes.map(([id, n]) => h("tr", { dataset: { rolloutNode: id, state: n.state } },
      h("td", null, h("a", { href: `#/node/${enc(id)}` }, id)),
      h("td", null, text(ringName(view, n.ring) ?? n.ring)),
      h("td", null, h("span", { class: `badge ${n.state}` }, text(n.state))),
      h("td", null, text(n.version)),
      h("td", null, text(n.active)),
      h("td", null, n.connected === undefined ? "—" : n.connected ? "yes" : "no"),
      h("td", { class: "reason" }, text(n.reason)),
      h("td", { class: "muted" }, n.rollback ? `${text(n.rollback.version)} ${text(n.rollback.state)}` : "—"))));
  }

  live.subscribe([`rollout:${rolloutId}`], {
    snapshot(data) {
      if (data) view = data;
      else replace(head, h("h1", { class: "mono" }, rolloutId), h("p", { class: "error" }, "no such rollout"));
      if (data) schedule();
    },
    event(_kind, data) {
      if (!data || data.rollout_id !== rolloutId || !view) return;
      const merged = mergeHead(view, data);
      const nodes = { ...(view.nodes || {}) };
      for (const [id, patch] of Object.entries(data.nodes || {})) nodes[id] = { ...(nodes[id] || {}), ...patch };
      merged.nodes = nodes;
      view = merged;
      schedule();
      refresh();
    },
  });
  render();
  return () => {
    if (frame) cancelAnimationFrame(frame);
    clearTimeout(refreshTimer);
  };
}
