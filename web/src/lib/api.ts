import { clearToken, getToken } from "./auth";

export class ApiError extends Error {
  constructor(
    message: string,
    readonly code: string | null = null,
    readonly status: number | null = null,
  ) {
    super(message);
  }
}

type Vars = Record<string, unknown>;

/** One GraphQL request to /graphql with the session's token; the `data`, or an ApiError. */
export async function gql<T>(query: string, variables: Vars = {}): Promise<T> {
  const token = getToken();
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  let r: Response;
  try {
    r = await fetch("/graphql", {
      method: "POST",
      headers,
      body: JSON.stringify({ query, variables }),
    });
  } catch (e) {
    throw new ApiError(`Studbook did not answer: ${String(e)}`, "UNAVAILABLE");
  }
  const body = (await r.json().catch(() => null)) as {
    data?: T;
    errors?: { message: string; extensions?: { code?: string } }[];
  } | null;
  if (r.status === 401) {
    if (token) {
      clearToken();
      window.dispatchEvent(new CustomEvent("studbook:signed-out"));
    }
    throw new ApiError("The token was refused: sign in again.", "UNAUTHENTICATED", 401);
  }
  if (!body) throw new ApiError(`HTTP ${r.status} from /graphql`, null, r.status);
  if (body.errors?.length) {
    const e = body.errors[0];
    throw new ApiError(e.message, e.extensions?.code ?? null, r.status);
  }
  return body.data as T;
}

/** Split `items` into chunks of `size` (documents are limited to 30 aliases). */
export function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

// Metric histories: up to 20 series a document and 20,000 points a document in all (5000 a page
// at most), so that a document's worst case (~8 per point) stays inside the API's query cost
// limit of 250,000 (graphql/_cost.py): one series reads 5000 points a page, twenty read 1000.
export const SERIES_PER_REQUEST = 20;
const POINTS_PER_REQUEST = 20_000;

export function historyPage(series: number): number {
  return Math.max(100, Math.min(5000, Math.floor(POINTS_PER_REQUEST / Math.max(1, series))));
}
const MAX_POINTS = 50_000;

export interface Point {
  step: number;
  value: number;
  at: string;
  position: number;
}

/**
 * The history of one metric for many runs: one document per SERIES_PER_REQUEST runs (aliases
 * `r0`...), each run's pages followed until done or MAX_POINTS.
 */
export async function metricHistories(runIds: string[], key: string): Promise<Map<string, Point[]>> {
  const out = new Map<string, Point[]>(runIds.map((id) => [id, []]));
  let pending = runIds.map((id) => ({ id, after: null as string | null }));
  while (pending.length) {
    const next: typeof pending = [];
    await Promise.all(
      chunks(pending, SERIES_PER_REQUEST).map(async (group) => {
        const first = historyPage(group.length);
        const fields = group
          .map(
            (_, i) =>
              `r${i}: run(id: $id${i}) { metricHistory(key: $key, first: ${first}, after: $after${i}) { nodes { step value at position } pageInfo { hasNextPage endCursor } } }`,
          )
          .join("\n");
        const decl = group.map((_, i) => `$id${i}: ID!, $after${i}: String`).join(", ");
        const vars: Vars = { key };
        group.forEach((g, i) => {
          vars[`id${i}`] = g.id;
          vars[`after${i}`] = g.after;
        });
        const data = await gql<Record<string, { metricHistory: { nodes: Point[]; pageInfo: { hasNextPage: boolean; endCursor: string | null } } } | null>>(
          `query ($key: String!, ${decl}) { ${fields} }`,
          vars,
        );
        group.forEach((g, i) => {
          const h = data[`r${i}`]?.metricHistory;
          if (!h) return;
          const points = out.get(g.id)!;
          points.push(...h.nodes);
          if (h.pageInfo.hasNextPage && points.length < MAX_POINTS) {
            next.push({ id: g.id, after: h.pageInfo.endCursor });
          }
        });
      }),
    );
    pending = next;
  }
  return out;
}

/** Every metric history of one run, SERIES_PER_REQUEST keys a document, up to MAX_POINTS each. */
export async function runHistories(runId: string, keys: string[]): Promise<Map<string, Point[]>> {
  const out = new Map<string, Point[]>(keys.map((k) => [k, []]));
  let pending = keys.map((key) => ({ key, after: null as string | null }));
  while (pending.length) {
    const next: typeof pending = [];
    await Promise.all(
      chunks(pending, SERIES_PER_REQUEST).map(async (group) => {
        const first = historyPage(group.length);
        const decl = group.map((_, i) => `$k${i}: String!, $a${i}: String`).join(", ");
        const fields = group
          .map((_, i) => `m${i}: metricHistory(key: $k${i}, first: ${first}, after: $a${i}) { nodes { step value at position } pageInfo { hasNextPage endCursor } }`)
          .join("\n");
        const vars: Vars = { id: runId };
        group.forEach((g, i) => {
          vars[`k${i}`] = g.key;
          vars[`a${i}`] = g.after;
        });
        const data = await gql<{ run: Record<string, { nodes: Point[]; pageInfo: { hasNextPage: boolean; endCursor: string | null } }> | null }>(
          `query ($id: ID!, ${decl}) { run(id: $id) { ${fields} } }`,
          vars,
        );
        group.forEach((g, i) => {
          const h = data.run?.[`m${i}`];
          if (!h) return;
          const points = out.get(g.key)!;
          points.push(...h.nodes);
          if (h.pageInfo.hasNextPage && points.length < MAX_POINTS) next.push({ key: g.key, after: h.pageInfo.endCursor });
        });
      }),
    );
    pending = next;
  }
  return out;
}
