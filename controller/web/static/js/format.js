// Formatting of times, sizes and numbers for display (pure).

export function ago(ms, now = Date.now()) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  return duration(Math.max(0, now - ms));
}

export function duration(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function parseTime(iso) {
  if (typeof iso !== "string") return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

export function pct(v) {
  return typeof v === "number" && Number.isFinite(v) ? `${v.toFixed(0)}%` : "—";
}

export function bytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function ms(v) {
  return typeof v === "number" && Number.isFinite(v) ? `${v.toFixed(v < 10 ? 1 : 0)} ms` : "—";
}

export function text(v) {
  if (v === null || v === undefined || v === "") return "—";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}
