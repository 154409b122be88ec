// The node's media plane as it reports it (node.rtc, class B: /api/v1/nodes/{id} `rtc`,
// live as `rtc.updated` on node:<id>): each peer's state, ICE state, selected candidate
// pair, negotiations, and per subflow its state, bytes and errors; then the last
// replacements with their reasons. Text only: every value from the node becomes a Text
// node (dom.js), never HTML. Media never counts for readiness, and nothing here says so.

import { h, replace } from "./dom.js";
import { bytes, parseTime, text } from "./format.js";

const SUBFLOWS = ["control", "file", "video", "audio"];

function flowRow(name, f) {
  return h("tr", { dataset: { subflow: name } },
    h("td", null, name),
    h("td", null, h("span", { class: `badge rtc-${text(f.state)}` }, text(f.state))),
    h("td", { class: "num" }, bytes(f.bytes_in)),
    h("td", { class: "num" }, bytes(f.bytes_out)),
    h("td", { class: "num" }, text(f.errors_total)));
}

function peerCard(p) {
  const flows = (p && typeof p.subflows === "object" && p.subflows) || {};
  const names = SUBFLOWS.filter((n) => flows[n]).concat(Object.keys(flows).filter((n) => !SUBFLOWS.includes(n)));
  return h("div", { class: "rtc-peer", dataset: { peerSessionId: text(p.peer_session_id), peerState: text(p.state) } },
    h("h3", null, h("code", null, text(p.peer_session_id)), " ",
      h("span", { class: `badge rtc-${text(p.state)}` }, text(p.state)), " ",
      h("span", { class: "muted" }, text(p.remote))),
    h("dl", { class: "kv" },
      h("dt", null, "ICE"), h("dd", { dataset: { rtcIce: "" } }, text(p.ice_state)),
      h("dt", null, "Candidate pair"), h("dd", { dataset: { rtcPair: "" } }, text(p.candidate_pair)),
      h("dt", null, "Negotiations"), h("dd", { dataset: { rtcNegotiations: "" } }, text(p.negotiations_total)),
      h("dt", null, "Connections"), h("dd", null, text(p.connections_total))),
    names.length ? h("table", { class: "rtc-flows" },
      h("thead", null, h("tr", null, ["Subflow", "State", "In", "Out", "Errors"].map((c) => h("th", null, c)))),
      h("tbody", null, names.map((n) => flowRow(n, flows[n] || {})))) : null);
}

/** The "rtc" card's body; render(report) with the node's `rtc` (null: none reported). */
export class RtcPanel {
  constructor() {
    this.el = h("div", { class: "rtc", dataset: { rtcPanel: "" } });
    this.render(null);
  }

  render(report) {
    const peers = (report && Array.isArray(report.peers)) ? report.peers : [];
    const history = (report && Array.isArray(report.history)) ? report.history : [];
    if (!peers.length && !history.length) {
      replace(this.el, h("p", { class: "muted" }, "No media peers. Open one from the Media page."));
      return;
    }
    replace(this.el,
      peers.length ? peers.map((p) => peerCard(p || {})) : h("p", { class: "muted" }, "No open peers."),
      history.length ? [h("h3", null, "Replaced or closed"), h("ul", { class: "events" }, history.slice().reverse().map((e) => h("li", null,
        h("span", { class: "muted" }, typeof e.at === "number" ? new Date(e.at * 1000).toISOString() : text(parseTime(e.at))), " ",
        h("code", null, text(e.peer_session_id)), " ", text(e.reason))))] : null);
  }
}
