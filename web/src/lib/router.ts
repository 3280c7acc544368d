// Hash routes: `#/<project>/<page>[/<id>][?<query>]`, e.g. `#/churn/runs?q=...` or
// `#/churn/run/logreg-v1-01`. Only names and filters go in the URL, never a token.

export const PAGES = ["runs", "run", "compare", "compare-models", "registry", "lineage", "audit"] as const;
export type Page = (typeof PAGES)[number] | "signin" | "projects";

export interface Route {
  page: Page;
  project: string | null;
  id: string | null;
  query: URLSearchParams;
}

export function parse(hash: string): Route {
  const body = hash.replace(/^#\/?/, "");
  const [path, qs = ""] = splitOnce(body, "?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(qs);
  if (parts[0] === "signin") return { page: "signin", project: null, id: null, query };
  if (parts.length === 0) return { page: "projects", project: null, id: null, query };
  const [project, page = "runs", ...rest] = parts;
  const known = (PAGES as readonly string[]).includes(page) ? (page as Page) : "runs";
  return { page: known, project, id: rest.length ? rest.join("/") : null, query };
}

export function href(
  project: string | null,
  page: Page,
  id: string | null = null,
  query: Record<string, string | number | boolean | null | undefined> | URLSearchParams = {},
): string {
  if (page === "signin") return "#/signin";
  if (page === "projects" || !project) return "#/";
  let out = `#/${encodeURIComponent(project)}/${page}`;
  if (id) out += "/" + id.split("/").map(encodeURIComponent).join("/");
  const qs = query instanceof URLSearchParams ? query : toParams(query);
  const text = qs.toString();
  return text ? `${out}?${text}` : out;
}

function toParams(q: Record<string, string | number | boolean | null | undefined>): URLSearchParams {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) {
    if (v !== null && v !== undefined && v !== "" && v !== false) p.set(k, String(v));
  }
  return p;
}

function splitOnce(s: string, sep: string): [string, string?] {
  const i = s.indexOf(sep);
  return i < 0 ? [s] : [s.slice(0, i), s.slice(i + 1)];
}

/** `churn/run:logreg-v1-01` -> { project: churn, kind: run, key: logreg-v1-01 } */
export function splitId(id: string): { project: string; kind: string; key: string } {
  const slash = id.indexOf("/");
  const colon = id.indexOf(":", slash);
  return { project: id.slice(0, slash), kind: id.slice(slash + 1, colon), key: id.slice(colon + 1) };
}

/** Where a global id is shown in the UI. */
export function hrefFor(id: string): string {
  const { project, kind, key } = splitId(id);
  switch (kind) {
    case "run":
      return href(project, "run", key);
    case "model":
      return href(project, "registry", null, { model: key });
    case "model_version": {
      const model = key.slice(0, key.lastIndexOf("@"));
      return href(project, "registry", null, { model, version: key.slice(key.lastIndexOf("@") + 1) });
    }
    case "deployment":
      return href(project, "registry", null, { model: key.slice(0, key.lastIndexOf("/")) });
    case "dataset_version":
      return href(project, "lineage", null, { from: id });
    default:
      return href(project, "audit", null, { subject: id });
  }
}
