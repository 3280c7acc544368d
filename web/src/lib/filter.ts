// The runs table's filter box: a small language compiled to searchRuns' RunFilter.
//
//   metric.val_accuracy > 0.7 and metric.loss.min < 0.6 and param.model = "logreg"
//   and tag.team = growth and tag.data and status in (completed, failed)
//   and experiment = baseline and started >= 2026-09-01 and dataset = churn/dataset_version:x@1
//
// Clauses are joined by `and`. Keys with dots or spaces go in backticks: metric.`val.loss`.
// Param values are JSON-ish: numbers, true/false, "quoted" or bare strings.

export type Op = "GT" | "GTE" | "LT" | "LTE" | "EQ" | "NEQ";
export type Agg = "LATEST" | "MIN" | "MAX";
export const STATUSES = ["RUNNING", "COMPLETED", "FAILED", "KILLED"] as const;
export type Status = (typeof STATUSES)[number];

export interface RunFilter {
  params?: { key: string; op: Op; value: string | number | boolean }[];
  metrics?: { key: string; op: Op; value: number; agg: Agg }[];
  tags?: { key: string; value: string | null }[];
  status?: Status[];
  experiment?: string;
  startedAfter?: string;
  startedBefore?: string;
  usedDatasetVersion?: string;
}

const OPS: Record<string, Op> = { ">": "GT", ">=": "GTE", "<": "LT", "<=": "LTE", "=": "EQ", "==": "EQ", "!=": "NEQ" };
const OP_TEXT: Record<Op, string> = { GT: ">", GTE: ">=", LT: "<", LTE: "<=", EQ: "=", NEQ: "!=" };
const KIND: Record<string, "param" | "metric" | "tag"> = {
  param: "param", params: "param", p: "param",
  metric: "metric", metrics: "metric", m: "metric",
  tag: "tag", tags: "tag", t: "tag",
};

export class FilterError extends Error {}

type Token = { t: "word" | "str" | "op" | "punct"; v: string; quoted?: boolean };

function tokenize(text: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (/\s/.test(c)) {
      i++;
    } else if (c === '"' || c === "'") {
      const end = text.indexOf(c, i + 1);
      if (end < 0) throw new FilterError(`unclosed quote ${c} at ${i + 1}`);
      out.push({ t: "str", v: text.slice(i + 1, end) });
      i = end + 1;
    } else if (c === "`") {
      const end = text.indexOf("`", i + 1);
      if (end < 0) throw new FilterError(`unclosed backtick at ${i + 1}`);
      out.push({ t: "word", v: text.slice(i + 1, end), quoted: true });
      i = end + 1;
    } else if ("<>=!".includes(c)) {
      const two = text.slice(i, i + 2);
      const op = OPS[two] ? two : c;
      if (!OPS[op]) throw new FilterError(`unknown operator ${op} at ${i + 1}`);
      out.push({ t: "op", v: op });
      i += op.length;
    } else if ("(),.".includes(c)) {
      out.push({ t: "punct", v: c });
      i++;
    } else {
      const m = /^[^\s"'`<>=!(),.]+/.exec(text.slice(i))!;
      // Numbers keep their decimal point: 0.7, 1e-3, -2.5
      const n = /^-?\d+(\.\d+)?([eE][-+]?\d+)?/.exec(text.slice(i));
      const dateLike = /^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2})?)?/.exec(text.slice(i));
      const tok = dateLike?.[0] ?? (n && n[0].length >= m[0].length ? n[0] : m[0]);
      out.push({ t: "word", v: tok });
      i += tok.length;
    }
  }
  return out;
}

function scalar(tok: Token): string | number | boolean {
  if (tok.t === "str") return tok.v;
  if (tok.v === "true") return true;
  if (tok.v === "false") return false;
  const n = Number(tok.v);
  return tok.v !== "" && Number.isFinite(n) ? n : tok.v;
}

function isoDay(v: string): string {
  if (/^\d{4}-\d{2}-\d{2}$/.test(v)) return `${v}T00:00:00Z`;
  if (/^\d{4}-\d{2}-\d{2}T[\d:.]+$/.test(v)) return `${v}Z`;
  if (Number.isNaN(Date.parse(v))) throw new FilterError(`not a date: ${v}`);
  return v;
}

/** Parse the filter text; an empty text is no filter. Throws FilterError naming the problem. */
export function parseFilter(text: string): RunFilter {
  const toks = tokenize(text);
  const f: RunFilter = {};
  let i = 0;
  const peek = () => toks[i];
  const take = (what: string): Token => {
    const t = toks[i++];
    if (!t) throw new FilterError(`expected ${what} at the end`);
    return t;
  };
  const takeOp = (): Op => {
    const t = take("an operator");
    if (t.t !== "op") throw new FilterError(`expected an operator, got ${t.v}`);
    return OPS[t.v];
  };
  while (i < toks.length) {
    const head = take("a clause");
    if (head.t !== "word") throw new FilterError(`expected a name, got ${head.v}`);
    const name = head.quoted ? head.v : head.v.toLowerCase();
    if (!head.quoted && KIND[name] && peek()?.v === ".") {
      i++;
      const key = take("a key");
      if (key.t !== "word" && key.t !== "str") throw new FilterError(`expected a key after ${head.v}.`);
      const kind = KIND[name];
      if (kind === "metric") {
        let agg: Agg = "LATEST";
        if (peek()?.v === "." ) {
          i++;
          const a = take("min, max or latest").v.toUpperCase();
          if (a !== "MIN" && a !== "MAX" && a !== "LATEST") throw new FilterError(`metric.${key.v}.${a.toLowerCase()}: expected min, max or latest`);
          agg = a;
        }
        const op = takeOp();
        const v = scalar(take("a number"));
        if (typeof v !== "number") throw new FilterError(`metric ${key.v}: ${String(v)} is not a number`);
        (f.metrics ??= []).push({ key: key.v, op, value: v, agg });
      } else if (kind === "param") {
        const op = takeOp();
        (f.params ??= []).push({ key: key.v, op, value: scalar(take("a value")) });
      } else {
        let value: string | null = null;
        if (peek()?.t === "op") {
          const op = takeOp();
          if (op !== "EQ") throw new FilterError(`tag ${key.v}: only = is supported`);
          value = String(scalar(take("a value")));
        }
        (f.tags ??= []).push({ key: key.v, value });
      }
    } else if (name === "status") {
      const t = take("= or in");
      const values: string[] = [];
      if (t.t === "op" && OPS[t.v] === "EQ") {
        values.push(take("a status").v);
      } else if (t.t === "word" && t.v.toLowerCase() === "in") {
        if (take("(").v !== "(") throw new FilterError("status in: expected (");
        for (;;) {
          const s = take("a status");
          if (s.v === ")") break;
          if (s.v !== ",") values.push(s.v);
        }
      } else {
        throw new FilterError("status: expected = or in (...)");
      }
      for (const v of values) {
        const s = v.toUpperCase() as Status;
        if (!STATUSES.includes(s)) throw new FilterError(`unknown status ${v}: one of ${STATUSES.join(", ").toLowerCase()}`);
        (f.status ??= []).includes(s) || f.status!.push(s);
      }
    } else if (name === "experiment") {
      if (takeOp() !== "EQ") throw new FilterError("experiment: only = is supported");
      f.experiment = String(scalar(take("a name")));
    } else if (name === "dataset") {
      if (takeOp() !== "EQ") throw new FilterError("dataset: only = is supported");
      // An id has dots and slashes: take tokens up to the next `and`.
      let id = "";
      while (i < toks.length && !(toks[i].t === "word" && toks[i].v.toLowerCase() === "and")) id += toks[i++].v;
      if (!id) throw new FilterError("dataset: expected a dataset version id");
      f.usedDatasetVersion = id;
    } else if (name === "started") {
      const op = takeOp();
      const when = isoDay(take("a date").v);
      if (op === "GT" || op === "GTE") f.startedAfter = when;
      else if (op === "LT" || op === "LTE") f.startedBefore = when;
      else throw new FilterError("started: use >, >=, < or <=");
    } else {
      throw new FilterError(
        `unknown name ${head.v}: use metric.<key>, param.<key>, tag.<key>, status, experiment, dataset or started`,
      );
    }
    if (i < toks.length) {
      const and = take("and");
      if (!(and.t === "word" && and.v.toLowerCase() === "and")) throw new FilterError(`expected "and", got ${and.v}`);
    }
  }
  return f;
}

function key(k: string): string {
  return /^[A-Za-z0-9_-]+$/.test(k) ? k : "`" + k + "`";
}

function lit(v: string | number | boolean): string {
  if (typeof v !== "string") return String(v);
  return /^[A-Za-z_][A-Za-z0-9_-]*$/.test(v) && v !== "true" && v !== "false" && v !== "and" ? v : JSON.stringify(v);
}

/** The text that parses back to ``f``. */
export function formatFilter(f: RunFilter): string {
  const out: string[] = [];
  for (const m of f.metrics ?? []) out.push(`metric.${key(m.key)}${m.agg === "LATEST" ? "" : "." + m.agg.toLowerCase()} ${OP_TEXT[m.op]} ${m.value}`);
  for (const p of f.params ?? []) out.push(`param.${key(p.key)} ${OP_TEXT[p.op]} ${lit(p.value)}`);
  for (const t of f.tags ?? []) out.push(t.value === null ? `tag.${key(t.key)}` : `tag.${key(t.key)} = ${lit(t.value)}`);
  if (f.status?.length) out.push(`status in (${f.status.map((s) => s.toLowerCase()).join(", ")})`);
  if (f.experiment !== undefined) out.push(`experiment = ${lit(f.experiment)}`);
  if (f.usedDatasetVersion) out.push(`dataset = ${f.usedDatasetVersion}`);
  if (f.startedAfter) out.push(`started >= ${f.startedAfter}`);
  if (f.startedBefore) out.push(`started < ${f.startedBefore}`);
  return out.join(" and ");
}
