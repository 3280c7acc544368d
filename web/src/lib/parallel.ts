// Parallel coordinates: one axis per param (numbers on a linear or log scale, anything else as
// evenly spaced categories) and the chosen metric last; each run is a polyline.

export interface Axis {
  key: string;
  kind: "number" | "category";
  log: boolean;
  /** value -> [0, 1] (0 at the bottom); null for a missing value. */
  pos: (v: unknown) => number | null;
  ticks: { at: number; label: string }[];
}

function isNum(v: unknown): v is number {
  return typeof v === "number" && Number.isFinite(v);
}

export function axis(key: string, values: readonly unknown[]): Axis {
  const present = values.filter((v) => v !== null && v !== undefined);
  if (present.length && present.every(isNum)) {
    const nums = present as number[];
    const lo = Math.min(...nums);
    const hi = Math.max(...nums);
    // A positive range over more than two decades reads better on a log scale (learning rates).
    const log = lo > 0 && hi / lo >= 100;
    const f = log ? Math.log10 : (x: number) => x;
    const a = f(lo);
    const b = f(hi);
    const pos = (v: unknown) => (isNum(v) ? (b === a ? 0.5 : (f(v) - a) / (b - a)) : null);
    const uniq = [...new Set(nums)].sort((x, y) => x - y);
    const tickValues = uniq.length <= 6 ? uniq : [lo, log ? Math.pow(10, (a + b) / 2) : (lo + hi) / 2, hi];
    return {
      key,
      kind: "number",
      log,
      pos,
      ticks: tickValues.map((v) => ({ at: pos(v)!, label: String(Number(v.toPrecision(3))) })),
    };
  }
  const cats = [...new Set(present.map((v) => (typeof v === "string" ? v : JSON.stringify(v))))].sort();
  const index = new Map(cats.map((c, i) => [c, i]));
  const pos = (v: unknown) => {
    if (v === null || v === undefined) return null;
    const i = index.get(typeof v === "string" ? v : JSON.stringify(v));
    return i === undefined ? null : cats.length === 1 ? 0.5 : i / (cats.length - 1);
  };
  return { key, kind: "category", log: false, pos, ticks: cats.map((c, i) => ({ at: cats.length === 1 ? 0.5 : i / (cats.length - 1), label: c })) };
}

/** A colour from blue (low) to red (high) for t in [0, 1]; grey for null. */
export function colour(t: number | null): string {
  if (t === null) return "#9aa3ad";
  const h = 220 - 220 * Math.max(0, Math.min(1, t));
  return `hsl(${h.toFixed(0)} 70% 45%)`;
}
