// The node page's web terminal: xterm.js (vendored under /static/vendor/xterm/, loaded only
// when a terminal opens) over the shell WebSocket, /api/v1/nodes/<id>/shell: the operator's
// end of docs/protocol.md "Interactive io", as cli/remote_io.py is the CLI's.
//
// Frames: hello {token} first; open {rows, cols, term} once welcomed; then
//  * input {data} (base64url): keystrokes in the order typed, only within the credit the
//    server grants (credit {bytes} frames); what waits for credit is bounded (MAX_QUEUED);
//  * resize {rows, cols} whenever the fit addon changes the terminal's size;
//  * ping every KEEPALIVE_MS, so a terminal left idle stays open: the server keeps the
//    node's end alive itself (its io.ack every 10 s), and this keeps the socket itself
//    from looking dead to anything in between (proxies drop idle sockets).
// Output frames (base64url bytes) are written to the terminal as they come (the server
// acks each to the node once it is sent here). exit {exit_code} shows the remote exit code;
// any other close shows its code and reason (a viewer's 4403 included).

const VENDOR = "/static/vendor/xterm";
const SUBPROTOCOL = "tether.v1.json";
const KEEPALIVE_MS = 10_000;
const MAX_FRAME = 16 << 10; // bytes of input per frame (the server takes up to 64 KiB)
const MAX_QUEUED = 1 << 20; // typed or pasted bytes waiting for credit; more is refused
const utf8 = new TextEncoder();

let vendor = null; // the xterm modules, loaded once

function loadVendor() {
  if (!vendor) {
    redirectStyleElements();
    const css = new Promise((resolve, reject) => {
      const link = document.createElement("link");
      link.rel = "stylesheet";
      link.href = `${VENDOR}/xterm/css/xterm.css`;
      link.onload = resolve;
      link.onerror = () => reject(new Error("cannot load xterm.css"));
      document.head.appendChild(link);
    });
    vendor = Promise.all([import(`${VENDOR}/xterm/lib/xterm.mjs`),
      import(`${VENDOR}/addon-fit/lib/addon-fit.mjs`), css])
      .then(([xterm, fit]) => ({ Terminal: xterm.Terminal, FitAddon: fit.FitAddon }))
      .catch((err) => { vendor = null; throw err; });
  }
  return vendor;
}

let redirected = false;

/** xterm writes its theme and cell-size rules into <style> elements it creates; this
 * page's CSP (style-src 'self', no 'unsafe-inline') refuses those. So createElement("style")
 * hands back an inert element whose text goes into a constructable stylesheet adopted by
 * the document instead (CSSOM, which the CSP allows): xterm's rules apply and nothing inline
 * is ever parsed. No other code here makes <style> elements (the CSP would refuse them),
 * so nothing else sees a difference. */
function redirectStyleElements() {
  if (redirected) return;
  redirected = true;
  const create = Document.prototype.createElement;
  Document.prototype.createElement = function createElement(tag, options) {
    if (String(tag).toLowerCase() !== "style") return create.call(this, tag, options);
    const doc = this;
    const el = create.call(this, "tether-style");
    const sheet = new CSSStyleSheet();
    let css = "";
    doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
    Object.defineProperty(el, "textContent", {
      get: () => css,
      set: (value) => { css = value === null || value === undefined ? "" : String(value); sheet.replaceSync(css); },
    });
    const remove = el.remove.bind(el);
    el.remove = () => {
      doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
      remove();
    };
    return el;
  };
}

/** xterm's DOM renderer gives a cell a 24-bit colour (and a minimum-contrast one) with
 * setAttribute("style", "color:#rrggbb") (DomRendererRowFactory._addStyle, its only inline
 * style). This page's CSP (style-src 'self', no 'unsafe-inline') refuses style attributes,
 * so such cells fell back to the default colour, with a CSP report per cell. The same
 * declarations set through CSSOM (style.cssText) are not inline markup and the CSP allows
 * them, so the row factory's _addStyle is swapped for one that does that. Only xterm's row
 * factory changes and the CSP stays as it is: what goes in is what xterm formats from the
 * colour's numbers, never text from the node. Returns whether it applied: a later xterm
 * that renders otherwise leaves host.dataset.truecolor "fallback" (the browser test reads
 * it) rather than breaking the terminal. */
function styleCellsThroughCssom(term) {
  const core = term._core;
  const factory = core && core._renderService && core._renderService._renderer
    && core._renderService._renderer.value && core._renderService._renderer.value._rowFactory;
  const proto = factory && Object.getPrototypeOf(factory);
  if (!proto || typeof proto._addStyle !== "function") return false;
  if (!proto._addStyle.cssom) {
    const addStyle = function _addStyle(el, declaration) { el.style.cssText += `${declaration};`; };
    addStyle.cssom = true;
    proto._addStyle = addStyle;
  }
  return true;
}

function toBase64url(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64url(text) {
  const s = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4));
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

/** One terminal session in `host`. onState(state, detail, extra) reports "loading",
 * "connecting", "open", "exited" ({exit_code}), "refused" or "closed"; close() ends it
 * (the server hangs the shell up, as closing a terminal window does). */
export class WebTerminal {
  constructor(host, nodeId, token, onState) {
    this.host = host;
    this.nodeId = nodeId;
    this.token = token;
    this.onState = onState;
    this.term = null;
    this.fit = null;
    this.ws = null;
    this.credit = 0;
    this.queue = []; // Uint8Array chunks waiting for credit, in typing order
    this.queued = 0;
    this.opened = false;
    this.finished = false;
    this.timers = [];
    this.observer = null;
  }

  async start() {
    this.onState("loading", "loading the terminal…");
    let mods;
    try {
      mods = await loadVendor();
    } catch (err) {
      this.finish("closed", err.message);
      return;
    }
    if (this.finished) return;
    const term = new mods.Terminal({
      cursorBlink: true, scrollback: 5000, convertEol: false, fontSize: 13,
      fontFamily: "ui-monospace, Menlo, Consolas, monospace",
    });
    const fit = new mods.FitAddon();
    term.loadAddon(fit);
    term.open(this.host);
    this.host.dataset.truecolor = styleCellsThroughCssom(term) ? "cssom" : "fallback";
    this.term = term;
    this.fit = fit;
    this.refit();
    term.onData((data) => this.type(utf8.encode(data)));
    term.onBinary((data) => this.type(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
    term.onResize(({ rows, cols }) => {
      this.host.dataset.size = `${rows}x${cols}`;
      if (this.opened) this.send("resize", { rows, cols });
    });
    this.host.dataset.size = `${term.rows}x${term.cols}`;
    let frame = 0;
    this.observer = new ResizeObserver(() => {
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; this.refit(); });
    });
    this.observer.observe(this.host);
    this.connect();
    term.focus();
  }

  refit() {
    if (!this.fit || this.finished) return;
    try { this.fit.fit(); } catch { /* not laid out (hidden): the next resize fits */ }
  }

  connect() {
    this.onState("connecting", `opening a shell on ${this.nodeId}…`);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/nodes/${encodeURIComponent(this.nodeId)}/shell`, SUBPROTOCOL);
    this.ws = ws;
    ws.onopen = () => this.send("hello", { token: this.token });
    ws.onmessage = (msg) => this.receive(msg.data);
    ws.onerror = () => {};
    ws.onclose = (ev) => this.closedBy(ev);
    this.timers.push(setInterval(() => this.send("ping", {}), KEEPALIVE_MS));
  }

  send(t, b) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ t, b }));
  }

  receive(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    const b = (frame && frame.b) || {};
    switch (frame && frame.t) {
      case "welcome":
        this.send("open", { rows: this.term.rows, cols: this.term.cols, term: "xterm-256color" });
        break;
      case "opened":
        this.opened = true;
        this.host.dataset.commandId = String(b.command_id || "");
        this.onState("open", `shell ${b.command_id || ""} on ${this.nodeId}`);
        this.send("resize", { rows: this.term.rows, cols: this.term.cols }); // fitted meanwhile
        break;
      case "credit":
        if (Number.isInteger(b.bytes) && b.bytes > 0) { this.credit += b.bytes; this.pump(); }
        break;
      case "output":
        if (typeof b.data === "string") {
          try { this.term.write(fromBase64url(b.data)); } catch { /* not base64url: dropped */ }
        }
        break;
      case "exit": {
        const code = b.exit_code;
        const what = code === null || code === undefined ? String(b.state || "ended") : `exit code ${code}`;
        const why = b.error && b.error !== what ? String(b.error) : ""; // "exit code N" once
        this.term.write(`\r\n\x1b[2m[${what}${why ? `: ${why}` : ""}]\x1b[0m\r\n`);
        this.finish("exited", `${what}${why ? ` · ${why}` : ""}`, { exit_code: code, state: b.state });
        break;
      }
      case "error":
        this.lastError = `${b.code || "error"}: ${b.message || ""}`;
        if (!this.opened) this.finish("refused", this.lastError);
        else this.term.write(`\r\n\x1b[31m[${this.lastError}]\x1b[0m\r\n`);
        break;
      default: // ping (the server's keepalive), pong, signalled: nothing to do
    }
  }

  type(bytes) {
    if (this.finished || !bytes.length) return;
    if (this.queued + bytes.length > MAX_QUEUED) {
      this.term.write("\x07"); // the bell: the node is not taking input this fast
      return;
    }
    this.queue.push(bytes);
    this.queued += bytes.length;
    this.pump();
  }

  /** Send what the credit allows, in order, in frames of at most MAX_FRAME bytes. */
  pump() {
    if (!this.opened) return;
    while (this.queue.length && this.credit > 0) {
      const head = this.queue[0];
      const n = Math.min(head.length, this.credit, MAX_FRAME);
      const piece = head.subarray(0, n);
      if (n === head.length) this.queue.shift(); else this.queue[0] = head.subarray(n);
      this.queued -= n;
      this.credit -= n;
      this.send("input", { data: toBase64url(piece) });
    }
  }

  closedBy(ev) {
    if (this.finished) return;
    const reason = ev.reason || this.lastError || (ev.code === 1006 ? "connection lost" : "closed");
    const refused = [4401, 4403, 4404, 4409].includes(ev.code) || !this.opened;
    this.term.write(`\r\n\x1b[2m[closed (${ev.code}): ${reason}]\x1b[0m\r\n`);
    this.finish(refused ? "refused" : "closed", `closed (${ev.code}): ${reason}`, { code: ev.code });
  }

  finish(state, detail, extra) {
    if (this.finished) return;
    this.finished = true;
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    if (this.observer) this.observer.disconnect();
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "closed by the operator");
    this.onState(state, detail, extra || {});
  }

  /** End the session (the page is left, or Close is pressed); the terminal stays readable
   * until dispose(). */
  close() {
    this.finish("closed", "closed by the operator");
  }

  dispose() {
    this.close();
    if (this.term) this.term.dispose();
  }
}
