// The fleet page: every node, live, in a virtualised list (only the rows in view are in
// the DOM, so 5,000 nodes scroll and update smoothly), with filters by label and state,
// saved views and column choice (localStorage), and multi-select bulk actions (bulk.js).
//
// Data: the `nodes` topic's snapshot, then its events (session.opened/closed,
// runtime.changed, liveness.changed) applied in place. An event about a node this page
// does not know yet, or a session that opened (new versions, labels), is followed by one
// GET of that node, coalesced and bounded in flight.

import { enc, get } from "./api.js";
import { runBulk } from "./bulk.js";
import { h, replace, setText } from "./dom.js";
import { ago, bytes, ms, parseTime, pct } from "./format.js";

const ROW_H = 44; // px, fixed: the virtual list places rows by index
const OVERSCAN = 8;
const STATES = ["online", "degraded", "updating", "stale", "offline"];
const VIEWS_KEY = "tether.views";
const COLUMNS_KEY = "tether.columns";
const MAX_REFRESH_IN_FLIGHT = 4;

const COLUMNS = [
  { key: "labels", title: "Labels", cell: (n) => labelChips(n.labels) },
  { key: "runtime", title: "Runtime", cell: (n) => (n.runtime && n.runtime.version) || "—" },
  { key: "sidecar", title: "Sidecar", cell: (n) => (n.transport && n.transport.sidecar && n.transport.sidecar.version) || "—" },
  { key: "last_seen", title: "Last seen", cell: (n) => (n.liveness === "online" ? "now" : `${ago(parseTime(n.last_seen_at))} ago`) },
  { key: "rtt", title: "RTT", cell: (n) => ms(n.transport && n.transport.rtt_ms) },
  { key: "cpu", title: "CPU", cell: (n) => pct(n.resources && n.resources.cpu_percent) },
  { key: "memory", title: "Memory", cell: (n) => pct(n.resources && n.resources.memory && n.resources.memory.percent) },
  { key: "disk", title: "Disk", cell: (n) => diskText(n.resources && n.resources.disk) },
  { key: "apps", title: "Apps", cell: (n) => appsText(n.apps) },
];
const DEFAULT_COLUMNS = ["labels", "runtime", "sidecar", "last_seen", "rtt", "cpu", "memory", "apps"];

function diskText(d) {
  if (!d) return "—";
  return `${pct(d.percent)}${typeof d.free === "number" ? ` · ${bytes(d.free)} free` : ""}`;
}

function appsText(apps) {
  if (!apps || typeof apps !== "object") return "—";
  const names = Object.keys(apps);
  if (!names.length) return "—";
  const running = names.filter((k) => apps[k] && apps[k].state === "running").length;
  return `${running}/${names.length} running`;
}

function labelChips(labels) {
  const out = [];
  for (const [k, v] of Object.entries(labels || {}).slice(0, 6)) {
    out.push(h("span", { class: "chip", title: `${k}=${v}` }, `${k}=${v}`));
  }
  return out.length ? out : "—";
}

function loadJSON(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key));
    return v === null ? fallback : v;
  } catch {
    return fallback;
  }
}

/** "env=lab, role" -> [["env","lab"], ["role", null]] (null: the label is present). */
export function parseLabelFilter(text) {
  return String(text).split(",").map((s) => s.trim()).filter(Boolean).map((part) => {
    const i = part.indexOf("=");
    return i < 0 ? [part, null] : [part.slice(0, i).trim(), part.slice(i + 1).trim()];
  });
}

function matches(node, filter) {
  if (filter.states.length && !filter.states.includes(node.liveness)) return false;
  const labels = node.labels || {};
  for (const [k, v] of filter.labelPairs) {
    if (!(k in labels)) return false;
    if (v !== null && labels[k] !== v) return false;
  }
  if (filter.search && !node.node_id.toLowerCase().includes(filter.search)) return false;
  return true;
}

export function mountFleet(root, live) {
  const nodes = new Map(); // node_id -> view, plus since_ms
  const selected = new Set();
  let columns = loadJSON(COLUMNS_KEY, DEFAULT_COLUMNS).filter((k) => COLUMNS.some((c) => c.key === k));
  const filter = { labels: "", states: [], search: "", labelPairs: [] };
  let list = []; // filtered, sorted ids
  let dirty = true;
  let frame = 0;
  let snapshotSeen = false;
  const rows = new Map(); // node_id -> row element in the DOM now
  const refreshQueue = new Set();
  let refreshing = 0;

  // -- layout ----------------------------------------------------------------------------
  const counts = h("div", { class: "counts" });
  const labelInput = h("input", { type: "search", name: "label-filter", placeholder: "labels: env=lab, role", "aria-label": "filter by label" });
  const searchInput = h("input", { type: "search", name: "search", placeholder: "node id", "aria-label": "filter by node id" });
  const stateBoxes = STATES.map((s) => h("label", { class: `state-toggle badge ${s}` },
    h("input", { type: "checkbox", value: s, name: "state" }), s));
  const viewSelect = h("select", { name: "view", "aria-label": "saved views" });
  const saveView = h("button", { type: "button" }, "Save view");
  const deleteView = h("button", { type: "button", class: "ghost" }, "Delete view");
  const columnsMenu = h("details", { class: "menu" }, h("summary", null, "Columns"),
    h("div", { class: "menu-body" }, COLUMNS.map((c) => h("label", null,
      h("input", { type: "checkbox", name: "column", value: c.key, checked: columns.includes(c.key) }), c.title))));
  const bulkBar = h("div", { class: "bulkbar", hidden: true });
  const bulkResults = h("div", { class: "bulk-results" });
  const header = h("div", { class: "vrow vhead", role: "row" });
  const spacer = h("div", { class: "vspacer" });
  const viewport = h("div", { class: "vlist", role: "table", "aria-label": "nodes" }, spacer);
  const empty = h("p", { class: "muted empty" }, "Waiting for the fleet…");

  replace(root,
    h("div", { class: "toolbar" }, h("h1", null, "Fleet"), counts),
    h("div", { class: "filters" }, searchInput, labelInput, h("div", { class: "states" }, stateBoxes),
      h("div", { class: "views" }, viewSelect, saveView, deleteView), columnsMenu),
    bulkBar, bulkResults,
    h("div", { class: "table" }, header, viewport), empty);

  // -- filters, views, columns -----------------------------------------------------------
  function setFilter(f) {
    filter.labels = f.labels || "";
    filter.states = (f.states || []).filter((s) => STATES.includes(s));
    filter.search = (f.search || "").toLowerCase();
    filter.labelPairs = parseLabelFilter(filter.labels);
    labelInput.value = filter.labels;
    searchInput.value = f.search || "";
    for (const box of stateBoxes) box.firstChild.checked = filter.states.includes(box.firstChild.value);
    invalidate();
  }
  function readFilter() {
    setFilter({ labels: labelInput.value, search: searchInput.value,
      states: stateBoxes.filter((b) => b.firstChild.checked).map((b) => b.firstChild.value) });
  }
  labelInput.addEventListener("input", readFilter);
  searchInput.addEventListener("input", readFilter);
  for (const box of stateBoxes) box.firstChild.addEventListener("change", readFilter);

  function renderViews() {
    const views = loadJSON(VIEWS_KEY, []);
    replace(viewSelect, h("option", { value: "" }, "All nodes"),
      views.map((v, i) => h("option", { value: String(i) }, v.name)));
  }
  viewSelect.addEventListener("change", () => {
    const v = loadJSON(VIEWS_KEY, [])[Number(viewSelect.value)];
    setFilter(v || {});
  });
  saveView.addEventListener("click", () => {
    const name = prompt("Name this view", filter.labels || filter.states.join(",") || "view");
    if (!name) return;
    const views = loadJSON(VIEWS_KEY, []).filter((v) => v.name !== name);
    views.push({ name, labels: filter.labels, states: filter.states, search: searchInput.value });
    localStorage.setItem(VIEWS_KEY, JSON.stringify(views));
    renderViews();
    viewSelect.value = String(views.length - 1);
  });
  deleteView.addEventListener("click", () => {
    const i = Number(viewSelect.value);
    if (viewSelect.value === "") return;
    const views = loadJSON(VIEWS_KEY, []);
    views.splice(i, 1);
    localStorage.setItem(VIEWS_KEY, JSON.stringify(views));
    renderViews();
    setFilter({});
  });
  columnsMenu.addEventListener("change", (ev) => {
    if (ev.target.name !== "column") return;
    columns = [...columnsMenu.querySelectorAll("input[name=column]:checked")].map((i) => i.value);
    localStorage.setItem(COLUMNS_KEY, JSON.stringify(columns));
    renderHeader();
    for (const row of rows.values()) row.remove();
    rows.clear();
    invalidate();
  });

  function gridTemplate() {
    return ["2.5rem", "minmax(9rem, 1.4fr)", "9.5rem", ...columns.map((k) => (k === "labels" ? "minmax(8rem, 2fr)" : "minmax(5rem, 1fr)"))].join(" ");
  }
  function renderHeader() {
    const all = h("input", { type: "checkbox", "aria-label": "select all shown", on: { change: (ev) => {
      for (const id of list) ev.target.checked ? selected.add(id) : selected.delete(id);
      invalidate();
    } } });
    replace(header, h("span", { class: "cell" }, all), h("span", { class: "cell" }, "Node"), h("span", { class: "cell" }, "State"),
      columns.map((k) => h("span", { class: `cell col-${k}` }, COLUMNS.find((c) => c.key === k).title)));
    header.style.gridTemplateColumns = gridTemplate();
  }

  // -- bulk ------------------------------------------------------------------------------
  function renderBulk() {
    bulkBar.hidden = selected.size === 0;
    if (!selected.size) return;
    replace(bulkBar, h("span", null, `${selected.size} selected`),
      h("button", { type: "button", class: "primary", dataset: { bulk: "diag.ping" }, on: { click: () => runBulk(bulkResults, live, [...selected], "diag.ping", {}) } }, "Ping"),
      h("button", { type: "button", dataset: { bulk: "exec" }, on: { click: () => {
        const line = prompt("Command line to run on each node");
        if (line) runBulk(bulkResults, live, [...selected], "exec", { line });
      } } }, "Run…"),
      h("button", { type: "button", class: "ghost", on: { click: () => { selected.clear(); invalidate(); } } }, "Clear"));
  }

  // -- the virtual list ------------------------------------------------------------------
  function invalidate() {
    dirty = true;
    if (!frame) frame = requestAnimationFrame(render);
  }

  function makeRow(id) {
    const row = h("div", { class: "vrow", role: "row", dataset: { nodeId: id } });
    row.style.gridTemplateColumns = gridTemplate();
    const box = h("input", { type: "checkbox", "aria-label": `select ${id}`, on: { change: (ev) => {
      ev.target.checked ? selected.add(id) : selected.delete(id);
      renderBulk();
    } } });
    const link = h("a", { href: `#/node/${enc(id)}`, class: "node-link" }, id);
    const badge = h("span", { class: "badge" });
    const since = h("span", { class: "since muted" });
    row.append(h("span", { class: "cell" }, box), h("span", { class: "cell name" }, link),
      h("span", { class: "cell" }, badge, since));
    row._parts = { box, badge, since, cells: columns.map((k) => {
      const cell = h("span", { class: `cell col-${k}` });
      row.appendChild(cell);
      return cell;
    }) };
    return row;
  }

  function fillRow(row, node, index) {
    row.style.transform = `translateY(${index * ROW_H}px)`;
    const p = row._parts;
    if (row.dataset.liveness !== node.liveness) row.dataset.liveness = node.liveness;
    p.box.checked = selected.has(node.node_id);
    p.badge.className = `badge ${node.liveness}`;
    setText(p.badge, node.liveness);
    setText(p.since, node.since_ms ? ago(node.since_ms) : "");
    if (row._v !== node._v) {
      row._v = node._v;
      columns.forEach((k, i) => {
        const out = COLUMNS.find((c) => c.key === k).cell(node);
        if (typeof out === "string") setText(p.cells[i], out);
        else replace(p.cells[i], out);
      });
    }
  }

  function render() {
    frame = 0;
    if (dirty) {
      list = [...nodes.values()].filter((n) => matches(n, filter)).map((n) => n.node_id).sort();
      dirty = false;
      spacer.style.height = `${list.length * ROW_H}px`;
      setText(counts, countsText());
      renderBulk();
      empty.hidden = list.length > 0;
      setText(empty, snapshotSeen ? (nodes.size ? "No node matches this filter." : "No node enrolled yet: see 'tether join-token create'.") : "Waiting for the fleet…");
    }
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_H) - OVERSCAN);
    const last = Math.min(list.length, Math.ceil((viewport.scrollTop + viewport.clientHeight) / ROW_H) + OVERSCAN);
    const keep = new Set();
    for (let i = first; i < last; i += 1) {
      const id = list[i];
      keep.add(id);
      let row = rows.get(id);
      if (!row) {
        row = makeRow(id);
        rows.set(id, row);
        viewport.appendChild(row);
      }
      fillRow(row, nodes.get(id), i);
    }
    for (const [id, row] of rows) {
      if (!keep.has(id)) { row.remove(); rows.delete(id); }
    }
  }

  function countsText() {
    const by = Object.fromEntries(STATES.map((s) => [s, 0]));
    for (const n of nodes.values()) by[n.liveness] = (by[n.liveness] || 0) + 1;
    return `${nodes.size} nodes · ${STATES.map((s) => `${by[s]} ${s}`).join(" · ")}` +
      (list.length !== nodes.size ? ` · ${list.length} shown` : "");
  }

  viewport.addEventListener("scroll", () => { if (!frame) frame = requestAnimationFrame(render); }, { passive: true });
  window.addEventListener("resize", invalidate);
  // Relative times ("3m 12s") age on screen; a local tick, no request.
  const ticker = setInterval(() => { for (const r of rows.values()) r._v = -1; invalidate(); }, 1000);

  // -- data ------------------------------------------------------------------------------
  function put(view, sinceMs) {
    const old = nodes.get(view.node_id);
    const since = old && old.liveness === view.liveness ? old.since_ms : sinceMs;
    nodes.set(view.node_id, { ...view, since_ms: since, _v: (old ? old._v : 0) + 1 });
    invalidate();
  }

  function sinceFromView(v) {
    if (v.liveness === "online" && v.session && v.session.opened_at) return parseTime(v.session.opened_at);
    return parseTime(v.last_seen_at);
  }

  function refresh(id) {
    refreshQueue.add(id);
    pump();
  }
  function pump() {
    while (refreshing < MAX_REFRESH_IN_FLIGHT && refreshQueue.size) {
      const id = refreshQueue.values().next().value;
      refreshQueue.delete(id);
      refreshing += 1;
      get(`/api/v1/nodes/${enc(id)}`).then((view) => {
        const old = nodes.get(id);
        put(view, old && old.liveness === view.liveness ? old.since_ms : Date.now());
      }).catch(() => {}).finally(() => { refreshing -= 1; pump(); });
    }
  }

  live.subscribe(["nodes"], {
    snapshot(data) {
      snapshotSeen = true;
      const seen = new Set();
      for (const v of data || []) {
        seen.add(v.node_id);
        const old = nodes.get(v.node_id);
        put(v, old && old.liveness === v.liveness ? old.since_ms : sinceFromView(v));
      }
      for (const id of [...nodes.keys()]) if (!seen.has(id)) nodes.delete(id);
      invalidate();
    },
    event(kind, data, atMs) {
      const id = data && data.node_id;
      if (typeof id !== "string") return;
      const old = nodes.get(id);
      if (!old || kind === "session.opened" || kind === "runtime.changed") refresh(id);
      if (old && kind === "session.closed") {
        // What the node view says of a closed session, without a request per node (a
        // mass disconnect would otherwise cost one GET per node).
        nodes.set(id, { ...old, session: null, transport: null, resources: {},
          last_seen_at: new Date(atMs || Date.now()).toISOString(), _v: old._v + 1 });
        invalidate();
      }
      const cur = nodes.get(id);
      if (cur && typeof data.liveness === "string" && STATES.includes(data.liveness)) {
        if (cur.liveness !== data.liveness) {
          nodes.set(id, { ...cur, liveness: data.liveness, since_ms: atMs || Date.now(), _v: cur._v + 1 });
          invalidate();
        }
      }
    },
  });

  renderHeader();
  renderViews();
  invalidate();
  return () => {
    clearInterval(ticker);
    window.removeEventListener("resize", invalidate);
    if (frame) cancelAnimationFrame(frame);
  };
}
