// The media page of a node (#/node/<id>/media): one WebRTC peer from this tab to the node
// (js/rtc.js), its test pattern in a <video>, the browser's camera sent and looped back
// (the node run with --rtc-video loopback), started and stopped on the same peer, and
// uploads to the node's workspace over the `file` channel (js/filesend.js) with progress,
// which carry on while the camera is toggled. Beside it, the node's own report of its
// peers (node:<id>, `rtc`), as the node page shows it.
//
// What the page knows of the media comes from getStats() (frames decoded, frame size,
// the selected candidate pair), shown as text and as data-* attributes; the time to the
// first frame is from the first offer to the first frame the <video> presents.

import { ApiError, enc, get } from "./api.js";
import { h, replace, setText } from "./dom.js";
import { bytes } from "./format.js";
import { FileSender } from "./filesend.js";
import { MediaPeer } from "./rtc.js";
import { RtcPanel } from "./rtcpanel.js";

const STATS_EVERY_MS = 500;
const FIRST_FRAME_POLL_MS = 50;
const LOG_KEEP = 30;

function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", null, title), ...children);
}

export function mountMedia(root, live, nodeId) {
  let peer = null;
  let sender = null;
  let statsTimer = null;
  let firstFrameTimer = null;
  let uploading = false;

  const state = h("span", { class: "badge", dataset: { mediaState: "none" } }, "no peer");
  const openBtn = h("button", { type: "button", class: "primary", dataset: { media: "open" } }, "Open peer");
  const closeBtn = h("button", { type: "button", disabled: true, dataset: { media: "close" } }, "Close peer");
  const camOn = h("button", { type: "button", disabled: true, dataset: { media: "camera-on" } }, "Start camera");
  const camOff = h("button", { type: "button", disabled: true, dataset: { media: "camera-off" } }, "Stop camera");
  const remoteVideo = h("video", { autoplay: true, playsinline: true, muted: true, class: "media-video", dataset: { mediaVideo: "remote" } });
  const localVideo = h("video", { autoplay: true, playsinline: true, muted: true, class: "media-video local", dataset: { mediaVideo: "local" } });
  remoteVideo.muted = true;
  localVideo.muted = true;
  const framesEl = h("span", { dataset: { framesDecoded: "0" } }, "0");
  const sizeEl = h("span", { dataset: { frameSize: "" } }, "—");
  const firstEl = h("span", { dataset: { firstFrameMs: "" } }, "—");
  const info = {
    psid: h("code", { dataset: { peerSessionId: "" } }, "—"),
    conn: h("span", null, "—"), ice: h("span", null, "—"), sig: h("span", null, "—"),
    negotiations: h("span", { dataset: { negotiations: "0" } }, "0"),
    pair: h("span", { dataset: { candidatePair: "" } }, "—"),
    control: h("span", null, "—"), file: h("span", null, "—"),
  };
  const fileInput = h("input", { type: "file", name: "upload", dataset: { media: "file" } });
  const uploadBtn = h("button", { type: "button", class: "primary", disabled: true, dataset: { media: "upload" } }, "Upload");
  const progress = h("progress", { max: "100", value: "0", dataset: { uploadProgress: "" } });
  const uploadMsg = h("span", { class: "muted", dataset: { uploadState: "idle" }, role: "status" }, "");
  const log = h("ul", { class: "events media-log" });
  const panel = new RtcPanel();

  replace(root,
    h("div", { class: "toolbar" },
      h("a", { href: `#/node/${enc(nodeId)}`, class: "back" }, `← ${nodeId}`),
      h("h1", null, `${nodeId} · media`), state,
      h("span", { class: "spacer" }), openBtn, closeBtn),
    h("div", { class: "grid" },
      h("section", { class: "card wide" }, h("h2", null, "Video"),
        h("div", { class: "media-videos" },
          h("figure", null, remoteVideo, h("figcaption", { class: "muted" }, "From the node (its test pattern, or your camera looped back)")),
          h("figure", null, localVideo, h("figcaption", { class: "muted" }, "Your camera"))),
        h("div", { class: "console-bar" }, camOn, camOff, h("span", { class: "spacer" }),
          h("span", { class: "muted" }, "frames decoded "), framesEl,
          h("span", { class: "muted" }, " · size "), sizeEl,
          h("span", { class: "muted" }, " · first frame "), firstEl)),
      section("Peer", h("dl", { class: "kv" },
        h("dt", null, "Peer session"), h("dd", null, info.psid),
        h("dt", null, "Connection"), h("dd", null, info.conn),
        h("dt", null, "ICE"), h("dd", null, info.ice),
        h("dt", null, "Signalling"), h("dd", null, info.sig),
        h("dt", null, "Negotiations"), h("dd", null, info.negotiations),
        h("dt", null, "Candidate pair"), h("dd", null, info.pair),
        h("dt", null, "control channel"), h("dd", null, info.control),
        h("dt", null, "file channel"), h("dd", null, info.file))),
      section("Upload to the workspace",
        h("div", { class: "console-bar" }, fileInput, uploadBtn),
        h("div", { class: "console-bar" }, progress, uploadMsg)),
      section("The node's report (rtc)", panel.el),
      section("Log", log)));

  function note(message) {
    log.prepend(h("li", null, h("span", { class: "muted" }, new Date().toLocaleTimeString()), " ", message));
    while (log.children.length > LOG_KEEP) log.lastChild.remove();
  }

  function paint() {
    const p = peer;
    const conn = p ? (p.closed ? "closed" : p.pc.connectionState) : "none";
    state.dataset.mediaState = conn;
    state.className = `badge rtc-${conn}`;
    setText(state, p ? conn : "no peer");
    openBtn.disabled = Boolean(p && !p.closed);
    closeBtn.disabled = !p || p.closed;
    const busy = !p || p.closed || p.pending !== null;
    camOn.disabled = busy || Boolean(p.camera);
    camOff.disabled = busy || !p.camera;
    uploadBtn.disabled = !p || p.closed || uploading || p.file.readyState !== "open";
    setText(info.psid, p ? p.peerSessionId : "—");
    info.psid.dataset.peerSessionId = p ? p.peerSessionId : "";
    setText(info.conn, p ? p.pc.connectionState : "—");
    setText(info.ice, p ? p.pc.iceConnectionState : "—");
    setText(info.sig, p ? p.pc.signalingState : "—");
    setText(info.negotiations, p ? p.negotiations : 0);
    info.negotiations.dataset.negotiations = String(p ? p.negotiations : 0);
    setText(info.control, p ? p.control.readyState : "—");
    setText(info.file, p ? p.file.readyState : "—");
    if (p && remoteVideo.srcObject !== p.remote) remoteVideo.srcObject = p.remote;
    const cam = p && p.camera ? p.camera : null;
    if (localVideo.srcObject !== cam) localVideo.srcObject = cam;
  }

  function firstFrame(ms) {
    if (firstEl.dataset.firstFrameMs || ms === null) return;
    firstEl.dataset.firstFrameMs = String(Math.round(ms));
    setText(firstEl, `${Math.round(ms)} ms`);
    clearInterval(firstFrameTimer);
    firstFrameTimer = null;
  }

  async function refreshStats() {
    if (!peer || peer.closed) return;
    const s = await peer.stats();
    framesEl.dataset.framesDecoded = String(s.framesDecoded);
    setText(framesEl, s.framesDecoded);
    const size = s.frameWidth ? `${s.frameWidth}x${s.frameHeight}` : "";
    sizeEl.dataset.frameSize = size;
    setText(sizeEl, size || "—");
    setText(info.pair, s.pair ? `${s.pair.local} ↔ ${s.pair.remote}` : "—");
    if (s.framesDecoded > 0 && peer.offerSentAt !== null) firstFrame(performance.now() - peer.offerSentAt);
  }

  async function open() {
    let config = { ice_servers: [], host_addresses: [] };
    try {
      config = await get("/api/v1/rtc/config");
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) { note(`rtc config: ${err.message}`); return; }
    }
    if (peer) peer.close("replaced by a new peer");
    delete firstEl.dataset.firstFrameMs;
    setText(firstEl, "—");
    const mine = new MediaPeer({ live, nodeId, config, onChange: () => { if (peer === mine) paint(); }, log: note });
    peer = mine;
    sender = new FileSender(mine.file);
    if (typeof remoteVideo.requestVideoFrameCallback === "function") {
      remoteVideo.requestVideoFrameCallback((now) => {
        if (peer === mine && mine.offerSentAt !== null) firstFrame(now - mine.offerSentAt);
      });
    }
    paint();
    clearInterval(firstFrameTimer);
    firstFrameTimer = setInterval(() => refreshStats().catch(() => {}), FIRST_FRAME_POLL_MS);
    try {
      await mine.open();
      note(`peer ${mine.peerSessionId} answered`);
    } catch (err) {
      note(`the offer failed: ${err.message}`);
      mine.teardown();
    }
  }

  async function toggle(on) {
    if (!peer) return;
    try {
      if (on) await peer.startCamera(); else await peer.stopCamera();
      note(on ? "camera on (sent on the same peer)" : "camera off (the node's pattern again)");
    } catch (err) {
      note(`camera: ${err.message}`);
    }
    paint();
  }

  async function upload() {
    const file = fileInput.files && fileInput.files[0];
    if (!file || !sender || uploading) return;
    uploading = true;
    paint();
    uploadMsg.dataset.uploadState = "hashing";
    try {
      const result = await sender.upload(file, (acked, size, phase) => {
        progress.value = size ? Math.floor((acked / size) * 100) : 100;
        uploadMsg.dataset.uploadState = phase;
        setText(uploadMsg, `${phase} · ${bytes(acked)} of ${bytes(size)}`);
      });
      uploadMsg.dataset.uploadState = "verified";
      uploadMsg.dataset.sha256 = result.sha256;
      setText(uploadMsg, `${file.name}: ${bytes(result.size)} verified (sha256 ${result.sha256.slice(0, 16)}…)`
        + (result.offset ? `, resumed at ${bytes(result.offset)}` : ""));
      note(`uploaded ${file.name}`);
    } catch (err) {
      uploadMsg.dataset.uploadState = "failed";
      setText(uploadMsg, `upload failed: ${err.message}`);
      note(`upload failed: ${err.message}`);
    } finally {
      uploading = false;
      paint();
    }
  }

  openBtn.addEventListener("click", () => open());
  closeBtn.addEventListener("click", () => { if (peer) peer.close(); paint(); });
  camOn.addEventListener("click", () => toggle(true));
  camOff.addEventListener("click", () => toggle(false));
  uploadBtn.addEventListener("click", () => upload());
  fileInput.addEventListener("change", () => paint());

  live.subscribe([`node:${nodeId}`], {
    snapshot(view) { panel.render(view && view.rtc); },
    event(kind, data) { if (kind === "rtc.updated") panel.render(data && data.rtc); },
  });
  statsTimer = setInterval(() => refreshStats().catch(() => {}), STATS_EVERY_MS);
  paint();
  return () => {
    clearInterval(statsTimer);
    clearInterval(firstFrameTimer);
    if (peer) peer.close("the operator left the page");
  };
}
