import { describe, expect, it } from "vitest";
import { cell, decodeColumns, decodeOrder, encodeColumns, encodeOrder, label, orderFor, sortsBy, type Column, type RunRow } from "./columns";

const row: RunRow = {
  id: "churn/run:r1",
  runId: "r1",
  name: null,
  status: "COMPLETED",
  actor: "alice",
  startedAt: "2026-09-07T08:00:00+00:00",
  finishedAt: null,
  params: { layers: [64, 32], lr: 0.01 },
  metrics: { loss: { value: 0.25, min: 0.2, max: 1.5 } },
  tags: { team: "growth" },
};

describe("runs table columns", () => {
  it("render cells for attributes, params, metrics and tags", () => {
    expect(cell(row, { kind: "attr", key: "name" })).toBe("r1");
    expect(cell(row, { kind: "attr", key: "status" })).toBe("completed");
    expect(cell(row, { kind: "attr", key: "started" })).toBe("2026-09-07 08:00");
    expect(cell(row, { kind: "attr", key: "finished" })).toBe("");
    expect(cell(row, { kind: "param", key: "lr" })).toBe("0.01");
    expect(cell(row, { kind: "param", key: "layers" })).toBe("[64,32]");
    expect(cell(row, { kind: "param", key: "missing" })).toBe("");
    expect(cell(row, { kind: "metric", key: "loss", agg: "LATEST" })).toBe("0.25");
    expect(cell(row, { kind: "metric", key: "loss", agg: "MIN" })).toBe("0.2");
    expect(cell(row, { kind: "metric", key: "loss", agg: "MAX" })).toBe("1.5");
    expect(cell(row, { kind: "tag", key: "team" })).toBe("growth");
    // Keys that name an Object.prototype member are only ever the run's own data.
    for (const key of ["constructor", "toString", "__proto__"]) {
      expect(cell(row, { kind: "param", key })).toBe("");
      expect(cell(row, { kind: "metric", key, agg: "LATEST" })).toBe("");
      expect(cell(row, { kind: "tag", key })).toBe("");
    }
    const odd = JSON.parse('{"constructor": 3, "__proto__": "x"}');
    expect(cell({ ...row, params: odd }, { kind: "param", key: "constructor" })).toBe("3");
    expect(cell({ ...row, tags: odd }, { kind: "tag", key: "__proto__" })).toBe("x");
  });

  it("sort through the API's orderings, the actor column excepted", () => {
    expect(orderFor({ kind: "attr", key: "status" }, "ASC")).toEqual({ attribute: "STATUS", direction: "ASC" });
    expect(orderFor({ kind: "metric", key: "loss", agg: "MIN" }, "DESC")).toEqual({ metric: "loss", agg: "MIN", direction: "DESC" });
    expect(orderFor({ kind: "param", key: "lr" }, "ASC")).toEqual({ param: "lr", direction: "ASC" });
    expect(orderFor({ kind: "tag", key: "team" }, "ASC")).toEqual({ tag: "team", direction: "ASC" });
    expect(orderFor({ kind: "attr", key: "actor" }, "ASC")).toBeNull();
    const o = decodeOrder("m:loss:min:asc");
    expect(sortsBy(o, { kind: "metric", key: "loss", agg: "MIN" })).toBe(true);
    expect(sortsBy(o, { kind: "metric", key: "loss", agg: "LATEST" })).toBe(false);
    expect(sortsBy(decodeOrder(null), { kind: "attr", key: "started" })).toBe(true);
  });

  it("round-trip through the URL", () => {
    const cols: Column[] = [
      { kind: "param", key: "lr" },
      { kind: "metric", key: "val loss", agg: "MAX" },
      { kind: "metric", key: "acc", agg: "LATEST" },
      { kind: "tag", key: "a:b,c" },
    ];
    expect(decodeColumns(encodeColumns(cols))).toEqual(cols);
    for (const text of ["m:val%20loss:max:asc", "p:lr:desc", "t:team:asc", "a:NAME:asc"]) {
      expect(encodeOrder(decodeOrder(text))).toBe(text);
    }
    expect(decodeOrder("a:DROP TABLE:asc")).toEqual({ attribute: "STARTED_AT", direction: "DESC" });
    expect(label({ kind: "metric", key: "loss", agg: "MIN" })).toBe("loss (min)");
  });
});
