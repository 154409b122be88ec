// The live connection to /ws (docs/protocol.md §9): hello with the token, subscribe, one
// snapshot per topic (paged: merged here), then events. On any close but a refusal it
// reconnects with jittered backoff and resubscribes every topic, so each handler gets a
// fresh snapshot (the resync) and never misses an event. Nothing here polls: the only
// timer besides the backoff is a ping well inside the server's 300 s idle timeout.

const SUBPROTOCOL = "tether.v1.json";
const PING_EVERY_MS = 60_000;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];
const RTC_ID = "rtc-"; // the ids of frames sendRtc sends

function backoff(attempt) {
  const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
  return base / 2 + Math.random() * base / 2; // jitter: a restarted controller is not stormed
}

/** How snapshot pages of a topic merge (§9 "Snapshots are paged"). */
export function mergePage(topic, acc, data) {
  if (acc === undefined) return data;
  const kind = topic.split(":", 1)[0];
  if (topic === "nodes") return acc.concat(data || []);
  if (kind === "logs" || kind === "commands") {
    return { ...data, items: (acc.items || []).concat((data && data.items) || []) };
  }
  if (kind === "monitor") {
    const topics = { ...(acc.topics || {}) };
    for (const [name, list] of Object.entries((data && data.topics) || {})) {
      topics[name] = (topics[name] || []).concat(list);
    }
    return { topics };
  }
  return data;
}

export class Live {
  /** opts: {token, onStatus(state, detail), onRefused(code, reason)} */
  constructor(opts) {
    this.opts = opts;
    this.handlers = new Map(); // topic -> Set of {snapshot, event}
    this.pending = new Map(); // topic -> merged snapshot so far
    this.inflight = new Map(); // subscribe frame id -> its topics, until answered
    this.ws = null;
    this.attempt = 0;
    this.closed = false;
    this.ready = false;
    this.nextId = 1;
    this.timer = null;
    this.pinger = null;
    this.rtcHandlers = new Set(); // the media page's: rtc.* frames, and errors about them
  }

  connect() {
    if (this.closed) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws`, SUBPROTOCOL);
    this.ws = ws;
    this.ready = false;
    this.status("connecting");
    ws.onopen = () => ws.send(JSON.stringify({ t: "hello", id: "h", b: { token: this.opts.token } }));
    ws.onmessage = (msg) => this.receive(msg.data);
    ws.onclose = (ev) => this.closedBy(ws, ev);
  }

  status(state, detail) {
    if (this.opts.onStatus) this.opts.onStatus(state, detail);
  }

  receive(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    const b = frame.b || {};
    if (typeof frame.t === "string" && (frame.t.startsWith("rtc.") || (frame.t === "error"
        && typeof frame.re === "string" && frame.re.startsWith(RTC_ID)))) {
      for (const fn of this.rtcHandlers) fn(frame);
      return;
    }
    if (frame.t === "welcome") {
      this.ready = true;
      this.attempt = 0;
      this.role = b.role;
      this.status("live", b.role);
      this.pinger = setInterval(() => this.send({ t: "ping", id: "p" }), PING_EVERY_MS);
      const topics = [...this.handlers.keys()];
      if (topics.length) this.sendSubscribe(topics); // resync after a reconnect
    } else if (frame.t === "snapshot") {
      const merged = mergePage(b.topic, this.pending.get(b.topic), b.data);
      if (b.more) { this.pending.set(b.topic, merged); return; }
      this.pending.delete(b.topic);
      for (const hd of this.handlers.get(b.topic) || []) hd.snapshot && hd.snapshot(merged, b.topic);
    } else if (frame.t === "event") {
      for (const hd of this.handlers.get(b.topic) || []) {
        hd.event && hd.event(b.kind, b.data, b.at_ms, b.topic);
      }
    } else if (frame.t === "subscribed") {
      this.inflight.delete(frame.re);
    } else if (frame.t === "error") {
      // A refused subscribe refuses all its topics: retry them one by one, so one topic
      // this controller does not serve (e.g. job:<id> before jobs exist) cannot cost the
      // others their resync; a lone refused topic is dropped.
      const topics = this.inflight.get(frame.re);
      this.inflight.delete(frame.re);
      if (topics && topics.length > 1) {
        for (const t of topics) this.sendSubscribe([t]);
      } else if (topics) {
        this.handlers.delete(topics[0]);
        console.warn("tether /ws: topic refused", topics[0], b.code, b.message);
      } else {
        console.warn("tether /ws error", b.code, b.message);
      }
    }
  }

  closedBy(ws, ev) {
    if (ws !== this.ws) return;
    // The controller closes this connection's peers with their nodes (rtc.close): tell
    // the media page, whose peer is over even if its media still flows for a moment.
    for (const fn of this.rtcHandlers) fn({ t: "ws.closed", b: {} });
    clearInterval(this.pinger);
    this.ready = false;
    this.pending.clear();
    this.inflight.clear();
    if (this.closed) return;
    if (ev.code === 4401 || ev.code === 4403) { // a refusal: retrying cannot help
      this.status("refused", ev.reason);
      if (this.opts.onRefused) this.opts.onRefused(ev.code, ev.reason);
      return;
    }
    this.status("reconnecting", ev.reason || `closed ${ev.code}`);
    this.timer = setTimeout(() => this.connect(), backoff(this.attempt));
    this.attempt += 1;
  }

  send(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  sendSubscribe(topics) {
    for (let i = 0; i < topics.length; i += 200) {
      const id = `s${this.nextId++}`;
      const batch = topics.slice(i, i + 200);
      this.inflight.set(id, batch);
      this.send({ t: "subscribe", id, b: { topics: batch } });
    }
  }

  /** fn(frame) gets every rtc.* frame, every error answering a frame sendRtc sent, and
   *  {t: "ws.closed"} when the connection drops. Returns a function that stops it. */
  onRtc(fn) {
    this.rtcHandlers.add(fn);
    return () => this.rtcHandlers.delete(fn);
  }

  /** Send one rtc.* frame; its id (an error about it answers with re = id), or null when
   *  the connection is not live. */
  sendRtc(t, b) {
    if (!this.ready) return null;
    const id = `${RTC_ID}${this.nextId++}`;
    this.send({ t, id, b });
    return id;
  }

  /** handler: {snapshot(data, topic), event(kind, data, at_ms, topic)}. The snapshot comes
   *  first, and again after every reconnect. Returns a function that stops the handler
   *  (the server keeps the topic: /ws has no unsubscribe; a page closes its Live). */
  subscribe(topics, handler) {
    const fresh = [];
    for (const t of topics) {
      if (!this.handlers.has(t)) { this.handlers.set(t, new Set()); fresh.push(t); }
      this.handlers.get(t).add(handler);
    }
    if (this.ready && fresh.length) this.sendSubscribe(fresh);
    return () => { for (const t of topics) this.handlers.get(t)?.delete(handler); };
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000, "page left");
  }
}
