// The commands page: recent commands (and jobs, where the controller has them) with state
// and timeline; a click shows a command's output, streamed while it runs.
//
// The list is read once over REST (GET /api/v1/commands?limit=100; /ws has no fleet-wide
// command topic), then each listed command is followed on `command:<id>`; a new command
// appears when its node's `commands:<node_id>` topic names it, for the nodes listed.

import { ApiError, enc, get } from "./api.js";
import { h, replace, setText } from "./dom.js";
import { ago, parseTime, text } from "./format.js";

const LIMIT = 100;
const MAX_NODE_TOPICS = 50; // with MAX_COMMAND_TOPICS, under a /ws client's 256 topics
const MAX_COMMAND_TOPICS = 150;

export function mountCommands(root, live, openId) {
  const items = new Map(); // command_id -> view
  const rowsEl = h("tbody");
  const detail = h("div", { class: "card detail", hidden: true });
  const jobs = h("div");
  const counts = h("span", { class: "muted" });
  let openCmd = null; // {id, stop}
  let frame = 0;
  const followedNodes = new Set();
  let commandTopics = 0;

  replace(root,
    h("div", { class: "toolbar" }, h("h1", null, "Commands"), counts),
    jobs,
    h("div", { class: "split" },
      h("section", { class: "card" }, h("table", { class: "commands" },
        h("thead", null, h("tr", null, ["Command", "Node", "State", "Created", "Timeline"].map((c) => h("th", null, c)))),
        rowsEl)),
      detail));

  function schedule() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
  }

  function render() {
    const list = [...items.values()].sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    setText(counts, `${list.length} recent`);
    replace(rowsEl, list.map((c) => h("tr", { class: openCmd && openCmd.id === c.command_id ? "open" : null,
      dataset: { commandId: c.command_id, state: c.state }, on: { click: () => open(c.command_id) } },
      h("td", { class: "what" }, h("a", { href: `#/commands/${enc(c.command_id)}`, title: c.command_id },
        c.kind === "exec" && c.args && Array.isArray(c.args.argv) ? `exec ${c.args.argv.join(" ")}` : text(c.kind))),
      h("td", { class: "nowrap" }, h("a", { href: `#/node/${enc(c.node_id)}` }, c.node_id)),
      h("td", null, h("span", { class: `badge cmd ${c.state}` }, text(c.state))),
      h("td", { class: "muted" }, c.created_at ? `${ago(parseTime(c.created_at))} ago` : "—"),
      h("td", { class: "timeline" }, (c.timeline || []).map((e) => h("span", { class: `step ${e.state}`, title: `${e.at || ""} ${e.detail || ""}` }, e.state))))));
  }

  function follow(c) {
    items.set(c.command_id, c);
    if (commandTopics >= MAX_COMMAND_TOPICS) return;
    commandTopics += 1;
    live.subscribe([`command:${c.command_id}`], {
      snapshot(view) { if (view) { items.set(view.command_id, view); schedule(); } },
      event(_kind, data) {
        if (!data || !data.command_id) return;
        get(`/api/v1/commands/${enc(data.command_id)}`).then((view) => {
          items.set(view.command_id, view);
          schedule();
          if (openCmd && openCmd.id === view.command_id) showDetail(view);
        }).catch(() => {});
      },
    });
    if (!followedNodes.has(c.node_id) && followedNodes.size < MAX_NODE_TOPICS) {
      followedNodes.add(c.node_id);
      live.subscribe([`commands:${c.node_id}`], {
        event(_kind, data) {
          if (data && data.command_id && !items.has(data.command_id)) {
            get(`/api/v1/commands/${enc(data.command_id)}`).then(follow).then(schedule).catch(() => {});
          }
        },
      });
    }
  }

  const output = h("pre", { class: "output", dataset: { commandOutput: "" } });
  const seen = new Set();
  function showDetail(c) {
    detail.hidden = false;
    replace(detail,
      h("header", null, h("h2", { class: "title mono" }, c.command_id), h("button", { type: "button", class: "ghost close", "aria-label": "close", on: { click: close } }, "×")),
      h("dl", { class: "kv" },
        h("dt", null, "Node"), h("dd", null, h("a", { href: `#/node/${enc(c.node_id)}` }, c.node_id)),
        h("dt", null, "Kind"), h("dd", null, text(c.kind)),
        h("dt", null, "Args"), h("dd", null, h("code", null, JSON.stringify(c.args))),
        h("dt", null, "State"), h("dd", null, h("span", { class: `badge cmd ${c.state}` }, text(c.state))),
        h("dt", null, "Exit code"), h("dd", null, text(c.exit_code)),
        h("dt", null, "Error"), h("dd", null, text(c.error)),
        h("dt", null, "Result"), h("dd", null, h("code", null, c.result ? JSON.stringify(c.result) : "—"))),
      h("h3", null, "Timeline"),
      h("ol", { class: "timeline-list" }, (c.timeline || []).map((e) => h("li", null,
        h("span", { class: `badge cmd ${e.state}` }, e.state), " ", h("span", { class: "muted" }, text(e.at)), e.detail ? ` · ${e.detail}` : ""))),
      h("h3", null, "Output"), output);
  }

  function close() {
    detail.hidden = true;
    if (openCmd) openCmd.stop();
    openCmd = null;
    if (location.hash !== "#/commands") history.replaceState(null, "", "#/commands");
    schedule();
  }

  async function open(id) {
    if (openCmd && openCmd.id === id) return;
    if (openCmd) openCmd.stop();
    replace(output);
    seen.clear();
    const mine = { id, stop: () => {} };
    openCmd = mine;
    try {
      const c = items.get(id) || await get(`/api/v1/commands/${enc(id)}`);
      if (!items.has(id)) follow(c);
      showDetail(c);
    } catch (err) {
      detail.hidden = false;
      replace(detail, h("p", { class: "error" }, err.message));
      return;
    }
    const append = (item) => {
      if (openCmd !== mine || !item || seen.has(item.id)) return;
      seen.add(item.id);
      output.appendChild(h("span", { class: item.source === "stderr" ? "stderr" : "stdout" }, item.data || ""));
    };
    mine.stop = live.subscribe([`logs:${id}`], {
      snapshot(data) { for (const item of (data && data.items) || []) append(item); },
      event(_kind, item) { append(item); },
    });
    schedule();
  }

  async function loadJobs() {
    try {
      const data = await get("/api/v1/jobs?limit=20");
      const list = (data && data.items) || [];
      replace(jobs, list.length ? h("section", { class: "card" }, h("h2", null, "Recent jobs"),
        h("table", null, h("tbody", null, list.map((j) => h("tr", null,
          h("td", null, text(j.job_id)), h("td", null, text(j.kind)),
          h("td", null, h("span", { class: `badge cmd ${j.state}` }, text(j.state))),
          h("td", { class: "muted" }, Object.entries(j.summary || {}).map(([k, v]) => `${v} ${k}`).join(" · "))))))) : null);
    } catch (err) {
      if (!(err instanceof ApiError && (err.status === 404 || err.status === 405))) replace(jobs, h("p", { class: "error" }, err.message));
    }
  }

  get(`/api/v1/commands?limit=${LIMIT}`).then((data) => {
    for (const c of (data && data.items) || []) follow(c);
    schedule();
    if (openId) open(openId);
  }).catch((err) => replace(rowsEl, h("tr", null, h("td", { colspan: 5, class: "error" }, err.message))));
  loadJobs();

  return () => { if (frame) cancelAnimationFrame(frame); };
}
