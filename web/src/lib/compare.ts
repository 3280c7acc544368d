// Comparison helpers: which cells of a row stand out, and environments flattened to key paths.

/** Per cell: whether it differs from the row's most common value (ties: the first seen). */
export function outliers(values: readonly unknown[]): boolean[] {
  const keys = values.map((v) => (v === undefined ? "null" : JSON.stringify(v)));
  const counts = new Map<string, number>();
  for (const k of keys) counts.set(k, (counts.get(k) ?? 0) + 1);
  if (counts.size <= 1) return keys.map(() => false);
  let mode = keys[0];
  for (const [k, n] of counts) if (n > (counts.get(mode) ?? 0)) mode = k;
  return keys.map((k) => k !== mode);
}

/** `{"a": {"b": 1}, "c": [1]}` -> `[["a.b", 1], ["c", [1]]]` (arrays kept whole). */
export function flatten(v: unknown, prefix = ""): [string, unknown][] {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return prefix ? [[prefix, v]] : [];
  const out: [string, unknown][] = [];
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
    out.push(...flatten(x, prefix ? `${prefix}.${k}` : k));
  }
  return out;
}

export interface Row {
  key: string;
  values: unknown[];
  differs: boolean;
}

/** Environments (one JSON per column) as rows of key paths, each with its values. */
export function jsonRows(objs: readonly unknown[]): Row[] {
  const byKey = new Map<string, unknown[]>();
  objs.forEach((o, i) => {
    for (const [k, v] of flatten(o)) {
      if (!byKey.has(k)) byKey.set(k, new Array(objs.length).fill(null));
      byKey.get(k)![i] = v;
    }
  });
  return [...byKey.keys()].sort().map((key) => {
    const values = byKey.get(key)!;
    return { key, values, differs: outliers(values).some(Boolean) };
  });
}
