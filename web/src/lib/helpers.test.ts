import { readdirSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { signInCode } from "./auth";
import { chunks, historyPage, SERIES_PER_REQUEST } from "./api";
import { jsonRows, outliers, flatten } from "./compare";
import { csvField, toCsv } from "./csv";
import { EVENT_TYPES } from "./events";
import { duration, num, short } from "./format";
import { axis, colour } from "./parallel";
import { href, hrefFor, parse, splitId } from "./router";
import { toggle, MAX_COMPARE } from "./selection";
import { ema } from "./smooth";
import { bars, range } from "./timeline";

describe("smoothing", () => {
  it("is the identity at 0 and a debiased moving average above", () => {
    expect(ema([1, 2, 3], 0)).toEqual([1, 2, 3]);
    const s = ema([1, 1, 1, 1], 0.9) as number[];
    s.forEach((v) => expect(v).toBeCloseTo(1, 12)); // no pull towards 0 at the start
    const step = ema([0, 0, 10, 10, 10], 0.5) as number[];
    expect(step[2]).toBeGreaterThan(0);
    expect(step[2]).toBeLessThan(10);
    expect(step[4]).toBeGreaterThan(step[3]);
    expect(ema([1, null, Number.NaN, 3], 0.5)[1]).toBeNull();
  });
});

describe("CSV", () => {
  it("quotes what needs it and defuses formulas", () => {
    expect(csvField('a "b", c')).toBe('"a ""b"", c"');
    expect(csvField("line\nbreak")).toBe('"line\nbreak"');
    expect(csvField("=HYPERLINK(1)")).toBe("'=HYPERLINK(1)");
    expect(csvField("-1+2")).toBe("'-1+2");
    expect(csvField(-1)).toBe("-1");
    expect(csvField(null)).toBe("");
    expect(csvField({ a: [1, 2] })).toBe('"{""a"":[1,2]}"');
    expect(toCsv(["x", "y"], [[1, "a,b"]])).toBe('x,y\r\n1,"a,b"\r\n');
  });
});

describe("comparison helpers", () => {
  it("mark the cells that differ from the most common value", () => {
    expect(outliers([1, 1, 2])).toEqual([false, false, true]);
    expect(outliers([3, 3, 3])).toEqual([false, false, false]);
    expect(outliers([null, 1, 1])).toEqual([true, false, false]);
    expect(outliers(["a", "b"])).toEqual([false, true]);
  });
  it("flatten environments to key paths", () => {
    expect(flatten({ a: { b: 1 }, c: [1] })).toEqual([["a.b", 1], ["c", [1]]]);
    const rows = jsonRows([{ python: "3.11", host: "a" }, { python: "3.12", host: "a" }, null]);
    expect(rows).toEqual([
      { key: "host", values: ["a", "a", null], differs: true },
      { key: "python", values: ["3.11", "3.12", null], differs: true },
    ]);
  });
});

describe("parallel coordinates axes", () => {
  it("scale numbers linearly, wide positive ranges on a log scale, and the rest as categories", () => {
    const lin = axis("layers", [2, 4, 6, null]);
    expect(lin.kind).toBe("number");
    expect([lin.pos(2), lin.pos(4), lin.pos(6), lin.pos(null)]).toEqual([0, 0.5, 1, null]);
    const log = axis("lr", [0.001, 0.01, 0.1]);
    expect(log.log).toBe(true);
    expect(log.pos(0.01)).toBeCloseTo(0.5, 12);
    const cat = axis("opt", ["sgd", "adam", "sgd"]);
    expect(cat.kind).toBe("category");
    expect(cat.ticks.map((t) => t.label)).toEqual(["adam", "sgd"]);
    expect([cat.pos("adam"), cat.pos("sgd")]).toEqual([0, 1]);
    expect(axis("one", [5, 5]).pos(5)).toBe(0.5);
    expect(colour(null)).toBe("#9aa3ad");
    expect(colour(0)).not.toBe(colour(1));
  });
});

describe("alias timeline", () => {
  it("lays intervals out in rows per alias, open ones up to now", () => {
    const t = (d: number) => new Date(Date.UTC(2026, 8, d)).toISOString();
    const now = Date.UTC(2026, 8, 30);
    const ivs = [
      { alias: "production", version: 1, validFrom: t(1), validTo: t(10), setBy: "a" },
      { alias: "staging", version: 2, validFrom: t(5), validTo: null, setBy: "b" },
      { alias: "production", version: 2, validFrom: t(10), validTo: null, setBy: "c" },
    ];
    const [t0, t1] = range(ivs, now);
    expect(t0).toBeLessThan(Date.parse(t(1)));
    expect(t1).toBeGreaterThan(now);
    const laid = bars(ivs, Date.parse(t(1)), now, 290, now);
    expect(laid.rows).toEqual(["production", "staging"]);
    const [p1, s2, p2] = laid.bars;
    expect(p1.x0).toBe(0);
    expect(p1.x1).toBeCloseTo(p2.x0, 9);
    expect(p2.x1).toBe(290);
    expect(s2.open).toBe(true);
  });
});

describe("routes", () => {
  it("parse and build hash routes", () => {
    const r = parse("#/churn/run/logreg-v1-01");
    expect([r.page, r.project, r.id]).toEqual(["run", "churn", "logreg-v1-01"]);
    expect(parse("#/").page).toBe("projects");
    expect(parse("#/churn").page).toBe("runs");
    expect(parse("#/churn/lineage?from=a%2Fb&asOf=x").query.get("from")).toBe("a/b");
    expect(href("churn", "compare", null, { runs: "a,b", only: false })).toBe("#/churn/compare?runs=a%2Cb");
    expect(parse(href("p", "run", "a b/c")).id).toBe("a b/c");
  });
  it("send every kind of id to its page", () => {
    expect(splitId("churn/model_version:churn-clf@2")).toEqual({ project: "churn", kind: "model_version", key: "churn-clf@2" });
    expect(hrefFor("churn/run:r1")).toBe("#/churn/run/r1");
    expect(hrefFor("churn/model_version:churn-clf@2")).toBe("#/churn/registry?model=churn-clf&version=2");
    expect(hrefFor("churn/deployment:churn-clf/prod")).toBe("#/churn/registry?model=churn-clf");
    expect(hrefFor("churn/dataset_version:f@1")).toBe("#/churn/lineage?from=churn%2Fdataset_version%3Af%401");
    expect(hrefFor("churn/dataset:f")).toBe("#/churn/audit?subject=churn%2Fdataset%3Af");
  });
});

describe("small helpers", () => {
  it("format numbers, durations and digests", () => {
    expect(num(100000)).toBe("100,000");
    expect(num(0.123456)).toBe("0.1235");
    expect(num(1.5e-7)).toBe("1.500e-7");
    expect(num(null)).toBe("");
    expect(duration(90)).toBe("1 min 30 s");
    expect(duration(7260)).toBe("2 h 1 min");
    expect(short("sha256:0123456789abcdef")).toBe("0123456789ab");
  });
  it("take a sign-in code only from a well-formed fragment", () => {
    expect(signInCode("#signin=abcdefghijklmnop_-12")).toBe("abcdefghijklmnop_-12");
    expect(signInCode("#signin=short")).toBeNull();
    expect(signInCode("#/churn/runs")).toBeNull();
    expect(signInCode("#signin=abcdefghijklmnop&x=1")).toBeNull();
  });
  it("cap a comparison at 100 runs", () => {
    let ids: string[] = [];
    for (let i = 0; i < MAX_COMPARE + 5; i++) ids = toggle(ids, `r${i}`);
    expect(ids.length).toBe(MAX_COMPARE);
    expect(toggle(ids, "r0")).not.toContain("r0");
    expect(chunks([1, 2, 3, 4, 5], 2)).toEqual([[1, 2], [3, 4], [5]]);
    // A history document's points stay inside the API's cost limit (~8 per point of 250,000).
    for (let n = 1; n <= SERIES_PER_REQUEST; n++) expect(n * historyPage(n) * 8).toBeLessThan(250_000);
    expect(historyPage(1)).toBe(5000);
  });
  it("suggest only event types that schema/events has", () => {
    const types = [...new Set(readdirSync(new URL("../../../schema/events", import.meta.url)).filter((f) => /\.v\d+\.schema\.json$/.test(f)).map((f) => f.replace(/\.v\d+\.schema\.json$/, "")))].sort();
    for (const t of EVENT_TYPES) expect(types).toContain(t);
  });
});
