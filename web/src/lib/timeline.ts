// The registry's alias timeline: one row per alias, one bar per interval it held a version.

export interface Interval {
  alias: string;
  version: number;
  validFrom: string;
  validTo: string | null;
  setBy: string;
}

export interface Bar {
  alias: string;
  version: number;
  x0: number;
  x1: number;
  open: boolean;
  setBy: string;
  validFrom: string;
  validTo: string | null;
}

/**
 * Bars in [0, width] for the time range [t0, t1] (epoch ms); an open interval runs to ``now``.
 * Rows are the aliases in order of first use.
 */
export function bars(intervals: Interval[], t0: number, t1: number, width: number, now: number): { rows: string[]; bars: Bar[] } {
  const span = Math.max(1, t1 - t0);
  const x = (t: number) => Math.max(0, Math.min(width, ((t - t0) / span) * width));
  const rows: string[] = [];
  const out: Bar[] = [];
  for (const iv of [...intervals].sort((a, b) => Date.parse(a.validFrom) - Date.parse(b.validFrom))) {
    if (!rows.includes(iv.alias)) rows.push(iv.alias);
    const from = Date.parse(iv.validFrom);
    const to = iv.validTo ? Date.parse(iv.validTo) : now;
    out.push({
      alias: iv.alias,
      version: iv.version,
      x0: x(from),
      x1: Math.max(x(from) + 2, x(to)),
      open: iv.validTo === null,
      setBy: iv.setBy,
      validFrom: iv.validFrom,
      validTo: iv.validTo,
    });
  }
  return { rows, bars: out };
}

/** The time range covering every interval (open ones up to ``now``), padded by 3%. */
export function range(intervals: Interval[], now: number): [number, number] {
  if (!intervals.length) return [now - 86_400_000, now];
  const starts = intervals.map((i) => Date.parse(i.validFrom));
  const ends = intervals.map((i) => (i.validTo ? Date.parse(i.validTo) : now));
  const lo = Math.min(...starts);
  const hi = Math.max(...ends, ...starts);
  const pad = Math.max(3_600_000, (hi - lo) * 0.03);
  return [lo - pad, hi + pad];
}
