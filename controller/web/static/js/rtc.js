// One long-lived WebRTC peer from this tab to a node (docs/protocol.md "Media plane"),
// signalled over the page's /ws connection:
//   rtc.offer {node_id, peer_session_id, negotiation_id, sdp, type: "offer"} -> rtc.answer
//   with the same ids; the browser's candidates trickle as rtc.ice (the node's come in
//   its SDP: aiortc does half-trickle); rtc.close either way.
// Rules:
// 1. One peer_session_id for the peer's life; each offer/answer round has a new integer
//    negotiation_id. Rounds are serialised (one offer in flight at a time): the browser
//    is the only one that offers on this peer.
// 2. Starting and stopping the camera is replaceTrack plus a direction change on the one
//    video transceiver, then a new round on the SAME peer: the control and file channels
//    stay open. The node (--rtc-video loopback) loops the camera back while the latest
//    offer sends video, and sends its test pattern otherwise.
// 3. An `error` answering a frame of ours (re = its id) fails that round, with the
//    node's or the controller's code and message.

const ANSWER_TIMEOUT_MS = 20_000;

/** The address and type of a candidate line ("candidate:f 1 udp p ADDRESS port typ TYPE"). */
export function candidateParts(line) {
  const words = String(line || "").replace(/^candidate:/, "").split(/\s+/);
  const typ = words.indexOf("typ");
  return { address: words[4] || "", type: typ > 0 ? words[typ + 1] || "" : "" };
}

export class MediaPeer {
  /** opts: {live, nodeId, config: {ice_servers, host_addresses}, onChange(), log(text)} */
  constructor(opts) {
    this.live = opts.live;
    this.nodeId = opts.nodeId;
    this.config = opts.config || { ice_servers: [], host_addresses: [] };
    this.onChange = opts.onChange || (() => {});
    this.log = opts.log || (() => {});
    this.peerSessionId = `web-${crypto.getRandomValues(new Uint32Array(2)).join("-")}`;
    this.negotiationId = 0;
    this.negotiations = 0;
    this.pending = null; // {nid, frameId, resolve, reject, timer}
    this.chain = Promise.resolve();
    this.closed = false;
    this.camera = null; // the camera's MediaStream while it is on
    this.offerSentAt = null; // performance.now() of the first offer (time to first frame)
    this.offerSent = false; // candidates wait for the offer of their round (bounded: a few)
    this.iceQueue = [];
    this.pc = new RTCPeerConnection({ iceServers: this.config.ice_servers || [] });
    this.video = this.pc.addTransceiver("video", { direction: "recvonly" });
    this.control = this.pc.createDataChannel("control");
    this.file = this.pc.createDataChannel("file");
    this.remote = new MediaStream();
    this.pc.addEventListener("track", (ev) => { this.remote.addTrack(ev.track); this.onChange(); });
    this.pc.addEventListener("icecandidate", (ev) => this.trickle(ev.candidate));
    for (const name of ["connectionstatechange", "iceconnectionstatechange", "signalingstatechange"]) {
      this.pc.addEventListener(name, () => this.onChange());
    }
    for (const ch of [this.control, this.file]) {
      ch.addEventListener("open", () => this.onChange());
      ch.addEventListener("close", () => this.onChange());
    }
    this.stopRtc = this.live.onRtc((frame) => this.receive(frame));
  }

  ids(nid) {
    return { node_id: this.nodeId, peer_session_id: this.peerSessionId, negotiation_id: nid };
  }

  trickle(candidate) {
    if (this.closed) return;
    if (!this.offerSent) { this.iceQueue.push(candidate); return; } // after its offer
    const line = candidate ? candidate.candidate : "";
    const allowed = this.config.host_addresses || [];
    if (line && allowed.length) {
      const { address, type } = candidateParts(line);
      if (type === "host" && !allowed.includes(address)) return; // --rtc-host-address
    }
    const b = { ...this.ids(this.negotiationId), candidate: line };
    if (candidate && candidate.sdpMid !== null) b.sdpMid = candidate.sdpMid;
    if (candidate && candidate.sdpMLineIndex !== null) b.sdpMLineIndex = candidate.sdpMLineIndex;
    this.live.sendRtc("rtc.ice", b);
  }

  receive(frame) {
    const b = frame.b || {};
    if (frame.t === "ws.closed") {
      if (!this.closed) this.fail("the /ws connection dropped: the controller closed this peer with the node; open a new one");
      return;
    }
    if (frame.t === "error") {
      const p = this.pending;
      if (p && frame.re === p.frameId) { this.settle(new Error(`${b.code}: ${b.message || ""}`)); return; }
      if (b.peer_session_id === this.peerSessionId || !b.peer_session_id) this.log(`error ${b.code}: ${b.message || ""}`);
      return;
    }
    if (b.peer_session_id !== this.peerSessionId) return; // another tab's peer, or old
    if (frame.t === "rtc.answer") {
      const p = this.pending;
      if (!p || b.negotiation_id !== p.nid) { this.log(`stale answer for round ${b.negotiation_id} ignored`); return; }
      this.pc.setRemoteDescription({ type: "answer", sdp: b.sdp }).then(
        () => { this.negotiations += 1; this.settle(null); },
        (err) => this.settle(err));
    } else if (frame.t === "rtc.ice") {
      if (!b.candidate) return;
      this.pc.addIceCandidate({ candidate: b.candidate, sdpMid: b.sdpMid, sdpMLineIndex: b.sdpMLineIndex })
        .catch((err) => this.log(`candidate refused: ${err.message}`));
    } else if (frame.t === "rtc.close") {
      this.fail(`the node closed the peer: ${b.reason || "no reason given"}`);
    } else if (frame.t === "rtc.offer") {
      this.log("the node offered on this peer; this page does not answer offers");
    }
  }

  settle(err) {
    const p = this.pending;
    if (!p) return;
    this.pending = null;
    clearTimeout(p.timer);
    if (err) p.reject(err); else p.resolve();
    this.onChange();
  }

  /** One offer/answer round (rule 1); resolves once the answer is applied. */
  negotiate() {
    const round = this.chain.then(() => this.round());
    this.chain = round.catch(() => {});
    return round;
  }

  async round() {
    if (this.closed) throw new Error("the peer is closed");
    this.offerSent = false;
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    this.negotiationId += 1;
    const nid = this.negotiationId;
    if (this.offerSentAt === null) this.offerSentAt = performance.now();
    const done = new Promise((resolve, reject) => {
      this.pending = { nid, frameId: null, resolve, reject,
        timer: setTimeout(() => this.settle(new Error(`no answer within ${ANSWER_TIMEOUT_MS / 1000} s`)), ANSWER_TIMEOUT_MS) };
    });
    const frameId = this.live.sendRtc("rtc.offer", { ...this.ids(nid), sdp: this.pc.localDescription.sdp, type: "offer" });
    if (frameId === null) this.settle(new Error("the /ws connection is not live"));
    else if (this.pending) this.pending.frameId = frameId;
    this.offerSent = true;
    for (const c of this.iceQueue.splice(0)) this.trickle(c);
    this.onChange();
    return done;
  }

  open() {
    return this.negotiate();
  }

  /** Rule 2: the camera on (getUserMedia), sent on the same transceiver, new round. */
  async startCamera() {
    if (this.camera) return;
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    this.camera = stream;
    const track = stream.getVideoTracks()[0];
    // The operator checks what the camera shows: keep its resolution and let the frame
    // rate give way when the machine is busy (Chromium's default halves the resolution
    // under CPU load, and the node loops back whatever arrives).
    track.contentHint = "detail";
    await this.video.sender.replaceTrack(track);
    this.video.direction = "sendrecv";
    this.onChange();
    await this.negotiate();
    try {
      const params = this.video.sender.getParameters();
      params.degradationPreference = "maintain-resolution";
      await this.video.sender.setParameters(params);
    } catch (err) {
      this.log(`camera: the resolution may drop under load (${err.message})`);
    }
  }

  /** Rule 2: the camera off, the transceiver back to receive only, new round. */
  async stopCamera() {
    if (!this.camera) return;
    const stream = this.camera;
    this.camera = null;
    await this.video.sender.replaceTrack(null);
    for (const t of stream.getTracks()) t.stop();
    this.video.direction = "recvonly";
    this.onChange();
    await this.negotiate();
  }

  fail(reason) {
    this.log(reason);
    this.teardown();
  }

  /** End the peer: rtc.close to the node (best effort), then the connection. */
  close(reason = "closed by the operator") {
    if (this.closed) return;
    this.live.sendRtc("rtc.close", { ...this.ids(this.negotiationId), reason });
    this.teardown();
  }

  teardown() {
    if (this.closed) return;
    this.closed = true;
    this.stopRtc();
    this.settle(new Error("the peer is closed"));
    if (this.camera) for (const t of this.camera.getTracks()) t.stop();
    this.camera = null;
    this.pc.close();
    this.onChange();
  }

  /** What getStats() says: inbound video (frames decoded, size), the selected pair. */
  async stats() {
    const out = { framesDecoded: 0, frameWidth: null, frameHeight: null, bytesReceived: 0, pair: null };
    if (this.closed) return out;
    const report = await this.pc.getStats();
    let pairId = null;
    const byId = new Map();
    report.forEach((s) => {
      byId.set(s.id, s);
      if (s.type === "inbound-rtp" && s.kind === "video") {
        out.framesDecoded = s.framesDecoded || 0;
        out.frameWidth = s.frameWidth ?? null;
        out.frameHeight = s.frameHeight ?? null;
        out.bytesReceived = s.bytesReceived || 0;
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        pairId = s.selectedCandidatePairId;
      }
    });
    const pair = pairId ? byId.get(pairId) : null;
    if (pair) {
      const local = byId.get(pair.localCandidateId) || {};
      const remote = byId.get(pair.remoteCandidateId) || {};
      out.pair = { local: `${local.candidateType || "?"} ${local.address || local.ip || ""}`.trim(),
        remote: `${remote.candidateType || "?"} ${remote.address || remote.ip || ""}`.trim() };
    }
    return out;
  }
}
