// Uploads over the peer's `file` data channel (docs/protocol.md "The `file` data
// channel"): offer {id, name, size, sha256} -> accept {offset, window} -> binary chunks
// (0x01, len(id), id, offset as 8 bytes big-endian, payload) -> done {sha256} ->
// verified {ok}. The sender keeps at most `window` bytes unacknowledged and paces on the
// channel's bufferedAmount (bufferedamountlow), so memory stays bounded on both ends.
// Progress counts acknowledged bytes: what the node has written.

export const CHUNK = 16 << 10; // the node's default chunk; below aiortc's 64 KiB SCTP cap
export const MAX_UPLOAD = 1 << 30; // read whole into memory to hash it: keep it sane
const BUFFERED_LOW = 256 << 10;
const WAIT_MS = 30_000; // the node's own per-wait limit

export async function sha256Hex(buffer) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function chunkMessage(idBytes, offset, payload) {
  const msg = new Uint8Array(2 + idBytes.length + 8 + payload.byteLength);
  msg[0] = 0x01;
  msg[1] = idBytes.length;
  msg.set(idBytes, 2);
  new DataView(msg.buffer).setBigUint64(2 + idBytes.length, BigInt(offset));
  msg.set(new Uint8Array(payload), 10 + idBytes.length);
  return msg;
}

export class FileSender {
  /** channel: an RTCDataChannel labelled "file" (open or opening). */
  constructor(channel) {
    this.channel = channel;
    this.channel.binaryType = "arraybuffer";
    this.channel.bufferedAmountLowThreshold = BUFFERED_LOW;
    this.transfers = new Map(); // id -> {onMessage(m)}
    this.channel.addEventListener("message", (ev) => {
      if (typeof ev.data !== "string") return; // the node sends no data to an upload
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      const t = m && typeof m.id === "string" ? this.transfers.get(m.id) : null;
      if (t) t.onMessage(m);
    });
  }

  async opened() {
    if (this.channel.readyState === "open") return;
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the file channel did not open")), WAIT_MS);
      this.channel.addEventListener("open", () => { clearTimeout(timer); resolve(); }, { once: true });
      this.channel.addEventListener("close", () => { clearTimeout(timer); reject(new Error("the file channel closed")); }, { once: true });
    });
  }

  drained() {
    if (this.channel.bufferedAmount <= this.channel.bufferedAmountLowThreshold) return Promise.resolve();
    return new Promise((resolve) => this.channel.addEventListener("bufferedamountlow", resolve, { once: true }));
  }

  /** Upload `file` (a File) to the node's workspace under its name. onProgress(acked,
   *  size, phase). Resolves with {sha256, size, offset (where the node resumed)};
   *  rejects with the node's error (code: message). */
  async upload(file, onProgress = () => {}) {
    if (file.size > MAX_UPLOAD) throw new Error(`the page uploads files up to ${MAX_UPLOAD} bytes`);
    await this.opened();
    onProgress(0, file.size, "hashing");
    const buffer = await file.arrayBuffer();
    const sha256 = await sha256Hex(buffer);
    const id = `up-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    const idBytes = new TextEncoder().encode(id);
    const size = buffer.byteLength;
    let acked = 0;
    let waiter = null; // resolves on the next message for this transfer
    let failure = null;
    const inbox = [];
    const transfer = {
      onMessage: (m) => {
        if (m.t === "ack" && Number.isSafeInteger(m.offset)) {
          acked = Math.max(acked, m.offset);
          onProgress(acked, size, "sending");
        } else if (m.t === "error") {
          failure = new Error(`${m.code}: ${m.message || "the node refused the upload"}`);
        } else {
          inbox.push(m);
        }
        if (waiter) { const w = waiter; waiter = null; w(); }
      },
    };
    const next = (what) => new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} from the node within ${WAIT_MS / 1000} s`)), WAIT_MS);
      waiter = () => { clearTimeout(timer); resolve(); };
    });
    const expect = async (t) => {
      for (;;) {
        if (failure) throw failure;
        const i = inbox.findIndex((m) => m.t === t);
        if (i >= 0) return inbox.splice(i, 1)[0];
        await next(t);
      }
    };
    this.transfers.set(id, transfer);
    try {
      this.channel.send(JSON.stringify({ t: "offer", id, name: file.name.normalize("NFC"), size, sha256 }));
      const accept = await expect("accept");
      let offset = accept.offset;
      const window = accept.window;
      acked = offset;
      const resumedAt = offset;
      onProgress(acked, size, "sending");
      while (offset < size) {
        if (failure) throw failure;
        if (this.channel.readyState !== "open") throw new Error("the file channel closed");
        if (offset - acked + CHUNK > window) { await next("ack"); continue; }
        await this.drained();
        const end = Math.min(size, offset + CHUNK);
        this.channel.send(chunkMessage(idBytes, offset, buffer.slice(offset, end)));
        offset = end;
      }
      this.channel.send(JSON.stringify({ t: "done", id, sha256 }));
      const verdict = await expect("verified");
      if (!verdict.ok) throw new Error("the node's sha256 did not match: the upload was discarded");
      onProgress(size, size, "verified");
      return { sha256, size, offset: resumedAt };
    } finally {
      this.transfers.delete(id);
    }
  }
}
