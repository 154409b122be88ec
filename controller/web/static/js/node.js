// The node page: state and actions (disable, enable, delete), resources as live charts,
// the readiness tree and recent incidents, apps (restart), the command console (exec,
// streamed output, cancel/pause/resume), monitor packets live, recent commands, session
// history and the node's events.
//
// Live data: `node:<id>` (liveness, sessions, runtime, resources, health), `monitor:<id>`,
// `commands:<id>`, and per console command `command:<cid>` and `logs:<cid>`. Session
// history and events are read over REST when the page opens and again when a session
// opens or closes (an event says so; nothing polls).

import { ApiError, call, enc, get, post } from "./api.js";
import { Spark } from "./chart.js";
import { h, replace, setText } from "./dom.js";
import { ago, bytes, ms, parseTime, text } from "./format.js";
import { RtcPanel } from "./rtcpanel.js";
import { SplitError, split } from "./shlex.js";
import { WebTerminal } from "./terminal.js";

const MONITOR_KEEP = 20; // packets per topic kept on the page
const MONITOR_SHOW = 5;
const MAX_OUTPUT_CHARS = 2_000_000; // the console keeps the tail beyond this
const FINAL = new Set(["succeeded", "failed", "cancelled", "rejected", "expired"]);

function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", null, title), ...children);
}

/** The node's health report (docs/protocol.md, node.event kind "health"): the readiness
 * tree (each check's state and why) and the newest incidents first. Every value is the
 * node's and goes through h() as text or a data attribute, never as markup. */
function renderHealthInto(el, report) {
  if (!report || typeof report !== "object") {
    replace(el, h("p", { class: "muted" }, "No readiness report from this node yet."));
    return;
  }
  const ready = report.ready === true;
  const checks = report.checks && typeof report.checks === "object" ? Object.entries(report.checks) : [];
  const incidents = Array.isArray(report.incidents) ? report.incidents.slice().reverse() : [];
  const reasons = Array.isArray(report.reasons) ? report.reasons : [];
  const at = typeof report.at_ms === "number" ? report.at_ms : null;
  replace(el,
    h("div", { class: "console-bar" },
      h("span", { class: `badge ${ready ? "online" : "failed"}`, dataset: { ready: String(ready) } }, ready ? "ready" : "not ready"),
      h("span", { class: "muted" }, at ? `reported ${ago(at)} ago` : ""),
      reasons.length ? h("span", { class: "muted" }, reasons.map(String).join(" · ")) : null),
    h("ul", { class: "tree", dataset: { readinessTree: "" } }, checks.map(([name, c]) => {
      const check = c && typeof c === "object" ? c : {};
      return h("li", { dataset: { check: name, ok: String(check.ok === true) } },
        h("span", { class: `badge ${check.ok === true ? "online" : "failed"}` }, text(check.state)), " ",
        h("strong", null, name),
        check.detail !== undefined && check.detail !== null ? h("span", { class: "muted" }, ` — ${String(check.detail)}`) : null);
    })),
    incidents.length ? h("table", { dataset: { incidents: "" } },
      h("thead", null, h("tr", null, ["Time", "Class", "Message", "Code"].map((c) => h("th", null, c)))),
      h("tbody", null, incidents.map((i) => {
        const item = i && typeof i === "object" ? i : {};
        const when = typeof item.at_ms === "number" ? new Date(item.at_ms) : null;
        return h("tr", { dataset: { incidentClass: text(item.class) } },
          h("td", { class: "muted" }, when && !Number.isNaN(when.getTime()) ? when.toISOString() : "—"),
          h("td", null, text(item.class)), h("td", null, text(item.message)), h("td", null, text(item.close_code)));
      })))
      : h("p", { class: "muted", dataset: { incidents: "" } }, "No incidents."),
    typeof report.incidents_total === "number" && report.incidents_total > incidents.length
      ? h("p", { class: "muted" }, `${report.incidents_total} incidents since the runtime started`) : null);
}

function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

/** The web terminal's card (js/terminal.js): Open starts a shell on the node (operator
 * or admin; a viewer sees the refusal), Close hangs it up; leaving the page closes it. */
function terminalPanel(live, nodeId) {
  const host = h("div", { class: "terminal-host", hidden: true });
  const state = h("span", { class: "badge cmd", dataset: { terminalState: "idle" } }, "idle");
  const detail = h("span", { class: "muted" });
  const openBtn = h("button", { type: "button", class: "primary", dataset: { terminal: "open" } }, "Open terminal");
  const closeBtn = h("button", { type: "button", disabled: true, dataset: { terminal: "close" } }, "Close");
  let session = null;
  function show(value, text, extra) {
    state.dataset.terminalState = value;
    state.className = `badge cmd term-${value}`;
    setText(state, value);
    setText(detail, text || "");
    if (extra && extra.exit_code !== undefined && extra.exit_code !== null) state.dataset.exitCode = String(extra.exit_code);
    const live = value === "loading" || value === "connecting" || value === "open";
    openBtn.disabled = live;
    closeBtn.disabled = !live;
  }
  openBtn.addEventListener("click", () => {
    if (session) session.dispose();
    delete state.dataset.exitCode;
    host.hidden = false;
    replace(host);
    session = new WebTerminal(host, nodeId, live.opts.token, show);
    session.start();
  });
  closeBtn.addEventListener("click", () => session && session.close());
  const el = h("section", { class: "card wide webterm" }, h("h2", null, "Terminal"),
    h("div", { class: "console-bar" }, state, detail, h("span", { class: "spacer" }), openBtn, closeBtn),
    host);
  return { el, close: () => { if (session) session.dispose(); session = null; } };
}

export function mountNode(root, live, nodeId) {
  let node = null;
  let sinceMs = null;
  const badge = h("span", { class: "badge" }, "…");
  const since = h("span", { class: "muted since" });
  const enabledTag = h("span", { class: "tag" });
  const actionMsg = h("span", { class: "muted", role: "status" });
  const info = h("div");
  const charts = { cpu: new Spark("CPU"), memory: new Spark("Memory"), disk: new Spark("Disk") };
  const load = h("p", { class: "muted" });
  const apps = h("div");
  const health = h("div");
  const sessions = h("div");
  const events = h("div");
  const monitor = h("div", { class: "monitor" });
  const commands = h("div");
  const monitorData = new Map(); // topic -> packets
  const rtc = new RtcPanel(); // the node's media plane (node.rtc), text only

  const disableBtn = h("button", { type: "button", dataset: { action: "disable" } }, "Disable");
  const enableBtn = h("button", { type: "button", dataset: { action: "enable" } }, "Enable");
  const deleteBtn = h("button", { type: "button", class: "danger", dataset: { action: "delete" } }, "Delete");

  // -- console ---------------------------------------------------------------------------
  const argv = h("input", { name: "argv", type: "text", placeholder: "uname -a", autocomplete: "off",
    spellcheck: "false", "aria-label": "command line" });
  const output = h("pre", { class: "output", dataset: { commandOutput: "" }, "aria-live": "polite" });
  const cmdState = h("span", { class: "badge cmd" }, "idle");
  const cmdInfo = h("span", { class: "muted" });
  const cancelBtn = h("button", { type: "button", disabled: true, dataset: { control: "cancel" } }, "Cancel");
  const pauseBtn = h("button", { type: "button", disabled: true, dataset: { control: "pause" } }, "Pause");
  const resumeBtn = h("button", { type: "button", disabled: true, dataset: { control: "resume" } }, "Resume");
  let current = null; // {id, seen: Set, stop}

  const form = h("form", { class: "console-form", on: { submit: (ev) => { ev.preventDefault(); runCommand(); } } },
    h("span", { class: "prompt" }, "$"), argv, h("button", { type: "submit", class: "primary" }, "Run"));

  const terminal = terminalPanel(live, nodeId);
  replace(root,
    h("div", { class: "toolbar" },
      h("a", { href: "#/", class: "back" }, "← Fleet"),
      h("h1", null, nodeId), badge, since, enabledTag,
      h("span", { class: "spacer" }),
      h("a", { href: `#/node/${enc(nodeId)}/media`, class: "button", dataset: { nav: "media" } }, "Media"),
      disableBtn, enableBtn, deleteBtn, actionMsg),
    h("div", { class: "grid" },
      section("Node", info),
      section("Resources", h("div", { class: "sparks" }, charts.cpu.el, charts.memory.el, charts.disk.el), load),
      section("Readiness and incidents", health),
      h("section", { class: "card wide console" }, h("h2", null, "Console"),
        form,
        h("div", { class: "console-bar" }, cmdState, cmdInfo, h("span", { class: "spacer" }), pauseBtn, resumeBtn, cancelBtn),
        output),
      terminal.el,
      section("Apps", apps),
      section("Monitor", monitor),
      section("rtc", rtc.el),
      section("Recent commands", commands),
      section("Sessions", sessions),
      section("Events", events)));

  // -- node state ------------------------------------------------------------------------
  function setLiveness(value, atMs) {
    if (!node) return;
    if (node.liveness !== value) sinceMs = atMs || Date.now();
    node.liveness = value;
    paintBadge(value);
  }

  function paintBadge(value) {
    badge.className = `badge ${value}`;
    badge.dataset.liveness = value;
    setText(badge, value);
  }

  function renderNode(view) {
    const previous = node;
    node = view;
    if (!previous || previous.liveness !== view.liveness) {
      sinceMs = view.liveness === "online" && view.session && view.session.opened_at
        ? parseTime(view.session.opened_at) : parseTime(view.last_seen_at);
    }
    paintBadge(view.liveness);
    setText(enabledTag, view.enabled ? "enabled" : "disabled");
    enabledTag.className = `tag ${view.enabled ? "ok" : "warn"}`;
    disableBtn.hidden = !view.enabled;
    enableBtn.hidden = view.enabled;
    const t = view.transport || {};
    const labelChips = Object.entries(view.labels || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
    replace(info, kv([
      ["Labels", labelChips.length ? labelChips : "—"],
      ["Runtime", `${text(view.runtime && view.runtime.version)} · ${text(view.runtime && view.runtime.state)}` +
        (view.runtime && view.runtime.update ? ` · updating: ${text(view.runtime.update.stage)} → ${text(view.runtime.update.version)}` : "")],
      ["Sidecar", text(t.sidecar && t.sidecar.version)],
      ["Session", view.session ? `${text(view.session.session_id)}${view.session.resumed ? " (resumed)" : ""}` : "none"],
      ["Remote", text(view.session && view.session.remote)],
      ["Last seen", view.last_seen_at ? `${ago(parseTime(view.last_seen_at))} ago` : "—"],
      ["RTT", ms(t.rtt_ms)],
      ["Reconnects", text(t.reconnects)],
      ["Outbox", t.outbox && typeof t.outbox.depth === "number" ? `${t.outbox.depth} frames` : "—"],
      ["Capabilities", (view.capabilities || []).join(", ") || "—"],
      ["Enrolled", text(view.enrolled_at)],
    ]));
    renderResources(view.resources);
    renderApps(view.apps);
    rtc.render(view.rtc);
    if ("health" in view) renderHealthInto(health, view.health); // lists and actions leave it out
  }

  function renderResources(r) {
    if (!r || typeof r !== "object") return;
    charts.cpu.push(r.cpu_percent);
    if (r.memory) charts.memory.push(r.memory.percent, `${(r.memory.percent ?? 0).toFixed(0)}% of ${bytes(r.memory.total)}`);
    if (r.disk) charts.disk.push(r.disk.percent, `${(r.disk.percent ?? 0).toFixed(0)}% · ${bytes(r.disk.free)} free`);
    const parts = [];
    if (Array.isArray(r.load)) parts.push(`load ${r.load.map((x) => Number(x).toFixed(2)).join(" ")}`);
    if (typeof r.cpus === "number") parts.push(`${r.cpus} CPUs`);
    if (typeof r.processes === "number") parts.push(`${r.processes} processes`);
    if (typeof r.uptime_s === "number") parts.push(`up ${ago(Date.now() - r.uptime_s * 1000)}`);
    setText(load, parts.join(" · "));
  }

  function renderApps(table) {
    const names = Object.keys(table || {});
    if (!names.length) { replace(apps, h("p", { class: "muted" }, "No managed apps.")); return; }
    replace(apps, h("table", null,
      h("thead", null, h("tr", null, ["App", "State", "PID", "Restarts", "Last exit", ""].map((c) => h("th", null, c)))),
      h("tbody", null, names.map((name) => {
        const a = table[name] || {};
        return h("tr", null, h("td", null, name), h("td", null, h("span", { class: `badge app ${a.state}` }, text(a.state))),
          h("td", null, text(a.pid)), h("td", null, text(a.restarts)), h("td", null, text(a.exit_code ?? a.last_exit_code)),
          h("td", null, h("button", { type: "button", on: { click: () => appRestart(name) } }, "Restart")));
      }))));
  }

  async function appRestart(name) {
    try {
      await post(`/api/v1/nodes/${enc(nodeId)}/commands`, { kind: "app.restart", args: { name } });
      setText(actionMsg, `restart of ${name} sent`);
    } catch (err) {
      setText(actionMsg, err.message);
    }
  }

  async function reloadNode() {
    try { renderNode(await get(`/api/v1/nodes/${enc(nodeId)}`)); } catch (err) { setText(actionMsg, err.message); }
  }

  async function reloadHistory() {
    try {
      const s = await get(`/api/v1/nodes/${enc(nodeId)}/sessions`);
      const items = (s.items || []).slice(0, 20);
      replace(sessions, items.length ? h("table", null,
        h("thead", null, h("tr", null, ["Opened", "Closed", "Code", "Reason", "Resumed", "Remote"].map((c) => h("th", null, c)))),
        h("tbody", null, items.map((x) => h("tr", null,
          h("td", null, text(x.opened_at)), h("td", null, x.closed_at ? text(x.closed_at) : "open"),
          h("td", null, text(x.close_code)), h("td", null, text(x.reason)),
          h("td", null, x.resumed ? "yes" : "no"), h("td", null, text(x.remote)))))) : h("p", { class: "muted" }, "No sessions yet."));
    } catch (err) {
      replace(sessions, h("p", { class: "error" }, err.message));
    }
    try {
      const e = await get(`/api/v1/nodes/${enc(nodeId)}/events?limit=30`);
      const items = e.items || [];
      replace(events, items.length ? h("ul", { class: "events" }, items.map((x) => h("li", null,
        h("span", { class: "muted" }, text(x.at)), " ", h("strong", null, text(x.kind)), " ",
        h("code", null, JSON.stringify(x.data).slice(0, 300))))) : h("p", { class: "muted" }, "No events."));
    } catch (err) {
      replace(events, h("p", { class: "error" }, err.message));
    }
  }

  // -- actions ---------------------------------------------------------------------------
  async function act(action) {
    setText(actionMsg, "");
    try {
      if (action === "delete") {
        if (!confirm(`Delete ${nodeId}? Its session closes and its key is removed.`)) return;
        await call("DELETE", `/api/v1/nodes/${enc(nodeId)}`);
        location.hash = "#/";
        return;
      }
      renderNode((await post(`/api/v1/nodes/${enc(nodeId)}/${action}`)).data);
    } catch (err) {
      if (action === "delete" && err instanceof ApiError && (err.status === 404 || err.status === 405)) {
        setText(actionMsg, "this controller cannot delete nodes yet");
      } else {
        setText(actionMsg, err.message);
      }
    }
  }
  disableBtn.addEventListener("click", () => act("disable"));
  enableBtn.addEventListener("click", () => act("enable"));
  deleteBtn.addEventListener("click", () => act("delete"));

  // -- console ---------------------------------------------------------------------------
  function setCommandState(state, cmd) {
    cmdState.className = `badge cmd ${state}`;
    cmdState.dataset.state = state;
    setText(cmdState, state);
    cancelBtn.disabled = FINAL.has(state);
    pauseBtn.disabled = state !== "running";
    resumeBtn.disabled = state !== "paused";
    if (cmd) {
      const bits = [`${cmd.command_id}`];
      if (cmd.exit_code !== null && cmd.exit_code !== undefined) bits.push(`exit ${cmd.exit_code}`);
      if (cmd.error) bits.push(String(cmd.error));
      setText(cmdInfo, bits.join(" · "));
    }
  }

  function appendChunk(item) {
    if (!current || !item || current.seen.has(item.id)) return;
    current.seen.add(item.id);
    const span = h("span", { class: item.source === "stderr" ? "stderr" : "stdout" }, item.data || "");
    output.appendChild(span);
    if (item.dropped) output.appendChild(h("span", { class: "note" }, `\n[${item.dropped} bytes dropped]\n`));
    while (output.textContent.length > MAX_OUTPUT_CHARS && output.firstChild) output.firstChild.remove();
    output.scrollTop = output.scrollHeight;
  }

  async function runCommand() {
    let words;
    try {
      words = split(argv.value);
    } catch (err) {
      if (err instanceof SplitError) { setText(cmdInfo, err.message); return; }
      throw err;
    }
    if (!words.length) return;
    if (current) current.stop();
    replace(output);
    setCommandState("submitting");
    setText(cmdInfo, "");
    let cmd;
    try {
      cmd = (await post(`/api/v1/nodes/${enc(nodeId)}/commands`, { kind: "exec", args: { argv: words } })).data;
    } catch (err) {
      setCommandState("refused");
      setText(cmdInfo, err.message);
      return;
    }
    const id = cmd.command_id;
    const mine = { id, seen: new Set(), stop: null };
    current = mine;
    setCommandState(cmd.state, cmd);
    const stopLogs = live.subscribe([`logs:${id}`], {
      snapshot(data) { if (current === mine) for (const item of (data && data.items) || []) appendChunk(item); },
      event(_kind, item) { if (current === mine) appendChunk(item); },
    });
    const stopCmd = live.subscribe([`command:${id}`], {
      snapshot(view) { if (current === mine && view) setCommandState(view.state, view); },
      event(_kind, data) {
        if (current !== mine || !data) return;
        setCommandState(data.state);
        if (FINAL.has(data.state)) get(`/api/v1/commands/${enc(id)}`).then((v) => current === mine && setCommandState(v.state, v)).catch(() => {});
      },
    });
    mine.stop = () => { stopLogs(); stopCmd(); };
  }

  for (const btn of [cancelBtn, pauseBtn, resumeBtn]) {
    btn.addEventListener("click", async () => {
      if (!current) return;
      try {
        await post(`/api/v1/commands/${enc(current.id)}/${btn.dataset.control}`);
      } catch (err) {
        setText(cmdInfo, err.message);
      }
    });
  }

  // -- monitor ---------------------------------------------------------------------------
  function renderMonitor() {
    if (!monitorData.size) { replace(monitor, h("p", { class: "muted" }, "No monitor packets.")); return; }
    replace(monitor, [...monitorData.entries()].sort().map(([topic, packets]) => h("div", { class: "monitor-topic" },
      h("h3", null, topic, " ", h("span", { class: "muted" }, `${packets.length} kept · seq ${text(packets[packets.length - 1].seq)}`)),
      packets.slice(-MONITOR_SHOW).reverse().map((p) => h("pre", { class: "packet" }, JSON.stringify(p.data, null, 1))))));
  }
  function addPacket(p) {
    if (!p || typeof p.topic !== "string") return;
    const list = monitorData.get(p.topic) || [];
    list.push(p);
    if (list.length > MONITOR_KEEP) list.splice(0, list.length - MONITOR_KEEP);
    monitorData.set(p.topic, list);
  }
  let monitorFrame = 0;
  function scheduleMonitor() {
    if (!monitorFrame) monitorFrame = requestAnimationFrame(() => { monitorFrame = 0; renderMonitor(); });
  }

  // -- recent commands -------------------------------------------------------------------
  let commandItems = [];
  function renderCommands() {
    const items = commandItems.slice(0, 15);
    replace(commands, items.length ? h("table", null, h("tbody", null, items.map((c) => h("tr", null,
      h("td", null, h("a", { href: `#/commands/${enc(c.command_id)}` }, text(c.kind))),
      h("td", null, h("span", { class: `badge cmd ${c.state}` }, text(c.state))),
      h("td", { class: "muted" }, c.created_at ? `${ago(parseTime(c.created_at))} ago` : ""))))) : h("p", { class: "muted" }, "No commands yet."));
  }

  // -- subscriptions ---------------------------------------------------------------------
  live.subscribe([`node:${nodeId}`], {
    snapshot(view) {
      if (!view) { replace(info, h("p", { class: "error" }, `Node ${nodeId} is not enrolled.`)); return; }
      renderNode(view);
      reloadHistory();
    },
    event(kind, data, atMs) {
      if (kind === "resources.updated") { renderResources(data && data.resources); return; }
      if (kind === "rtc.updated") { rtc.render(data && data.rtc); return; }
      if (kind === "health.updated") { renderHealthInto(health, data && data.health); return; }
      if (data && typeof data.liveness === "string") setLiveness(data.liveness, atMs);
      if (kind === "session.opened" || kind === "session.closed" || kind === "runtime.changed") {
        reloadNode();
        reloadHistory();
      }
    },
  });
  live.subscribe([`monitor:${nodeId}`], {
    snapshot(data) {
      monitorData.clear();
      for (const [topic, list] of Object.entries((data && data.topics) || {})) for (const p of list) addPacket({ ...p, topic });
      scheduleMonitor();
    },
    event(_kind, p) { addPacket(p); scheduleMonitor(); },
  });
  live.subscribe([`commands:${nodeId}`], {
    snapshot(data) { commandItems = (data && data.items) || []; renderCommands(); },
    event(_kind, data) {
      if (!data || !data.command_id) return;
      const found = commandItems.find((c) => c.command_id === data.command_id);
      if (found) { found.state = data.state; renderCommands(); } else {
        get(`/api/v1/commands/${enc(data.command_id)}`).then((c) => {
          if (!commandItems.some((x) => x.command_id === c.command_id)) commandItems.unshift(c);
          renderCommands();
        }).catch(() => {});
      }
    },
  });

  const ticker = setInterval(() => setText(since, sinceMs ? `for ${ago(sinceMs)}` : ""), 1000);
  return () => {
    clearInterval(ticker);
    terminal.close();
    if (monitorFrame) cancelAnimationFrame(monitorFrame);
  };
}
