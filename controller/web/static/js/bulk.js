// Bulk actions: one command over many nodes, each node's result shown as it comes.
//
// Through a job (issue 13): POST /api/v1/jobs {nodes, kind, args, offline: "skip"} -> 202
// {job_id}; GET /api/v1/jobs/{id} -> {job_id, state, nodes: {id: {command_id, state}},
// summary}; `job:<id>` events (job.updated) say when to read it again. Each node's command
// is then followed on `command:<command_id>` (its state and result, pushed). A controller
// without jobs (POST /api/v1/jobs answers 404 or 405) gets one command per node instead,
// with offline "fail" standing for "skip".

import { ApiError, call, enc, get, post } from "./api.js";
import { h, replace, setText } from "./dom.js";
import { SplitError, split } from "./shlex.js";

const MAX_FOLLOWED = 100; // command topics per bulk action (a /ws client holds 256)
const DONE = new Set(["succeeded", "failed", "cancelled", "rejected", "expired", "skipped", "offline"]);

function resultText(cmd) {
  if (!cmd) return "";
  if (cmd.error) return String(cmd.error);
  if (cmd.kind === "diag.ping" && cmd.result && typeof cmd.result.received_ms === "number"
      && typeof cmd.result.created_ms === "number") {
    return `pong · ${Math.max(0, cmd.result.received_ms - cmd.result.created_ms).toFixed(0)} ms to the node`;
  }
  if (cmd.exit_code !== null && cmd.exit_code !== undefined) return `exit ${cmd.exit_code}`;
  return "";
}

export async function runBulk(container, live, nodeIds, kind, rawArgs) {
  let args = rawArgs;
  if (kind === "exec" && typeof rawArgs.line === "string") {
    try {
      args = { argv: split(rawArgs.line) };
    } catch (err) {
      if (err instanceof SplitError) { alert(err.message); return; }
      throw err;
    }
    if (!args.argv.length) return;
  }
  const rows = new Map();
  let followed = 0;
  const summary = h("span", { class: "muted" }, "submitting…");
  const body = h("div", { class: "bulk-list" });
  const title = kind === "exec" ? `exec ${args.argv.join(" ")}` : kind;
  const card = h("section", { class: "card bulk", dataset: { bulkKind: kind } },
    h("header", null, h("strong", null, `${title} on ${nodeIds.length} node${nodeIds.length === 1 ? "" : "s"}`), " ", summary,
      h("button", { type: "button", class: "ghost close", "aria-label": "close", on: { click: () => card.remove() } }, "×")),
    body);
  container.prepend(card);

  function row(nodeId) {
    let r = rows.get(nodeId);
    if (!r) {
      const state = h("span", { class: "badge" }, "pending");
      const result = h("span", { class: "result" });
      const el = h("div", { class: "bulk-row", dataset: { bulkNode: nodeId, state: "pending" } },
        h("a", { href: `#/node/${enc(nodeId)}` }, nodeId), state, result);
      body.appendChild(el);
      r = { el, state, result, followed: null, live: false };
      rows.set(nodeId, r);
    }
    return r;
  }
  function show(nodeId, state, text) {
    const r = row(nodeId);
    r.el.dataset.state = state;
    r.state.className = `badge cmd ${state}`;
    setText(r.state, state);
    if (text !== undefined) setText(r.result, text);
    const states = [...rows.values()].map((x) => x.el.dataset.state);
    const done = states.filter((s) => DONE.has(s)).length;
    setText(summary, `${done}/${nodeIds.length} done`);
  }
  function follow(nodeId, commandId) {
    const r = row(nodeId);
    if (!commandId || r.followed === commandId) return;
    r.followed = commandId;
    followed += 1;
    if (followed > MAX_FOLLOWED) return; // beyond: the job's own events and reads say it
    r.live = true;
    live.subscribe([`command:${commandId}`], {
      snapshot(cmd) { if (cmd) show(nodeId, cmd.state, resultText(cmd)); },
      event(_kind, data) {
        if (data && DONE.has(data.state)) {
          get(`/api/v1/commands/${enc(commandId)}`).then((cmd) => show(nodeId, cmd.state, resultText(cmd)))
            .catch(() => show(nodeId, data.state));
        } else if (data && data.state) {
          show(nodeId, data.state);
        }
      },
    });
  }
  for (const id of nodeIds) row(id);

  let jobId = null;
  try {
    const r = await post("/api/v1/jobs", { nodes: nodeIds, kind, args, offline: "skip" });
    jobId = r.data && r.data.job_id;
  } catch (err) {
    if (!(err instanceof ApiError) || (err.status !== 404 && err.status !== 405)) {
      setText(summary, `refused: ${err.message}`);
      return;
    }
  }
  if (jobId) {
    card.dataset.jobId = jobId;
    // One read at a time: events that arrive meanwhile ask for one more read after it.
    let reading = false;
    let again = false;
    const readJob = () => {
      if (reading) { again = true; return; }
      reading = true;
      get(`/api/v1/jobs/${enc(jobId)}`).then((job) => {
        for (const [nodeId, n] of Object.entries(job.nodes || {})) {
          if (!(rows.get(nodeId) && rows.get(nodeId).live)) show(nodeId, n.state || "pending");
          follow(nodeId, n.command_id);
        }
      }).catch((err) => setText(summary, err.message)).finally(() => {
        reading = false;
        if (again) { again = false; readJob(); }
      });
    };
    live.subscribe([`job:${jobId}`], { snapshot: readJob, event: readJob });
    readJob();
    return;
  }
  // Without jobs: one command per node, side by side.
  await Promise.all(nodeIds.map(async (nodeId) => {
    try {
      const r = await call("POST", `/api/v1/nodes/${enc(nodeId)}/commands`, { kind, args, offline: "fail" });
      show(nodeId, r.data.state, resultText(r.data));
      follow(nodeId, r.data.command_id);
    } catch (err) {
      show(nodeId, err.code === "node_offline" ? "skipped" : "failed", err.message);
    }
  }));
}

export function clearBulk(container) {
  replace(container);
}
