// The runs table's columns: built-in attributes, and chosen params, metrics (latest, min or max)
// and tags. Each column knows its cell text and the searchRuns ordering that sorts by it.

import { num, time, value } from "./format";
import type { Agg } from "./filter";

export type Column =
  | { kind: "attr"; key: "name" | "status" | "started" | "finished" | "actor" }
  | { kind: "param"; key: string }
  | { kind: "metric"; key: string; agg: Agg }
  | { kind: "tag"; key: string };

export interface RunRow {
  id: string;
  runId: string;
  name: string | null;
  status: string;
  actor: string;
  startedAt: string | null;
  finishedAt: string | null;
  // Keyed by name, as `searchRunTable` rows carry them (built by PostgreSQL, in key order).
  params: Record<string, unknown>;
  metrics: Record<string, { value: number; min: number; max: number }>;
  tags: Record<string, string>;
}

/** ``map[key]`` when ``map`` has it itself (a key such as `constructor` is data, not the prototype's). */
function own<T>(map: Record<string, T>, key: string): T | undefined {
  return Object.hasOwn(map, key) ? map[key] : undefined;
}

export interface RunOrder {
  attribute?: "STARTED_AT" | "FINISHED_AT" | "NAME" | "RUN_ID" | "STATUS";
  metric?: string;
  agg?: Agg;
  param?: string;
  tag?: string;
  direction: "ASC" | "DESC";
}

export const ATTRS: Column[] = [
  { kind: "attr", key: "name" },
  { kind: "attr", key: "status" },
  { kind: "attr", key: "started" },
  { kind: "attr", key: "finished" },
  { kind: "attr", key: "actor" },
];

const ATTR_ORDER = { name: "NAME", status: "STATUS", started: "STARTED_AT", finished: "FINISHED_AT" } as const;

export function label(c: Column): string {
  switch (c.kind) {
    case "attr":
      return c.key === "actor" ? "who" : c.key;
    case "metric":
      return c.agg === "LATEST" ? c.key : `${c.key} (${c.agg.toLowerCase()})`;
    default:
      return c.key;
  }
}

/** The ordering that sorts by ``c``, or null when the API cannot sort by it. */
export function orderFor(c: Column, direction: "ASC" | "DESC"): RunOrder | null {
  switch (c.kind) {
    case "attr":
      return c.key === "actor" ? null : { attribute: ATTR_ORDER[c.key], direction };
    case "metric":
      return { metric: c.key, agg: c.agg, direction };
    case "param":
      return { param: c.key, direction };
    case "tag":
      return { tag: c.key, direction };
  }
}

/** Whether ``order`` sorts by ``c``. */
export function sortsBy(order: RunOrder, c: Column): boolean {
  const o = orderFor(c, order.direction);
  if (!o) return false;
  return (
    o.attribute === order.attribute &&
    o.metric === order.metric &&
    (o.metric === undefined || (o.agg ?? "LATEST") === (order.agg ?? "LATEST")) &&
    o.param === order.param &&
    o.tag === order.tag
  );
}

export function cell(r: RunRow, c: Column): string {
  switch (c.kind) {
    case "attr":
      if (c.key === "name") return r.name ?? r.runId;
      if (c.key === "status") return r.status.toLowerCase();
      if (c.key === "started") return time(r.startedAt);
      if (c.key === "finished") return time(r.finishedAt);
      return r.actor;
    case "param":
      return value(own(r.params, c.key));
    case "tag":
      return own(r.tags, c.key) ?? "";
    case "metric": {
      const m = own(r.metrics, c.key);
      if (!m) return "";
      return num(c.agg === "MIN" ? m.min : c.agg === "MAX" ? m.max : m.value);
    }
  }
}

/** Columns as URL text: `p:lr,m:loss:min,t:team` (attributes are always shown). */
export function encodeColumns(cols: Column[]): string {
  return cols
    .filter((c) => c.kind !== "attr")
    .map((c) => {
      const k = encodeURIComponent(c.key);
      if (c.kind === "metric") return c.agg === "LATEST" ? `m:${k}` : `m:${k}:${c.agg.toLowerCase()}`;
      return `${c.kind === "param" ? "p" : "t"}:${k}`;
    })
    .join(",");
}

export function decodeColumns(text: string): Column[] {
  const out: Column[] = [];
  for (const part of text.split(",")) {
    const [kind, rawKey, agg] = part.split(":");
    if (!rawKey) continue;
    const key = decodeURIComponent(rawKey);
    if (kind === "p") out.push({ kind: "param", key });
    else if (kind === "t") out.push({ kind: "tag", key });
    else if (kind === "m") {
      const a = (agg ?? "latest").toUpperCase();
      out.push({ kind: "metric", key, agg: a === "MIN" || a === "MAX" ? a : "LATEST" });
    }
  }
  return out;
}

/** The order as URL text: `m:loss:min:asc`, `p:lr:desc`, `a:STARTED_AT:desc`. */
export function encodeOrder(o: RunOrder): string {
  const dir = o.direction.toLowerCase();
  if (o.metric !== undefined) return `m:${encodeURIComponent(o.metric)}:${(o.agg ?? "LATEST").toLowerCase()}:${dir}`;
  if (o.param !== undefined) return `p:${encodeURIComponent(o.param)}:${dir}`;
  if (o.tag !== undefined) return `t:${encodeURIComponent(o.tag)}:${dir}`;
  return `a:${o.attribute ?? "STARTED_AT"}:${dir}`;
}

export function decodeOrder(text: string | null): RunOrder {
  const fallback: RunOrder = { attribute: "STARTED_AT", direction: "DESC" };
  if (!text) return fallback;
  const parts = text.split(":");
  const direction = parts[parts.length - 1] === "asc" ? "ASC" : "DESC";
  const key = decodeURIComponent(parts[1] ?? "");
  if (parts[0] === "m" && parts.length === 4) {
    const a = parts[2].toUpperCase();
    return { metric: key, agg: a === "MIN" || a === "MAX" ? a : "LATEST", direction };
  }
  if (parts[0] === "p" && parts.length === 3) return { param: key, direction };
  if (parts[0] === "t" && parts.length === 3) return { tag: key, direction };
  if (parts[0] === "a" && ["STARTED_AT", "FINISHED_AT", "NAME", "RUN_ID", "STATUS"].includes(key)) {
    return { attribute: key as RunOrder["attribute"], direction };
  }
  return fallback;
}
