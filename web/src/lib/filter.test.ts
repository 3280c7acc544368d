import { describe, expect, it } from "vitest";
import { FilterError, formatFilter, parseFilter } from "./filter";

describe("the runs filter language", () => {
  it("compiles every kind of clause to a RunFilter", () => {
    const f = parseFilter(
      'metric.val_accuracy > 0.7 and m.loss.min <= 0.6 and param.model = "logreg" and p.lr <= 0.03 ' +
        "and tag.team = growth and tag.data and status in (completed, failed) and experiment = churn-logreg " +
        "and started >= 2026-09-01 and started < 2026-11-01T00:00:00Z and dataset = churn/dataset_version:features@61bf1960bd93",
    );
    expect(f).toEqual({
      metrics: [
        { key: "val_accuracy", op: "GT", value: 0.7, agg: "LATEST" },
        { key: "loss", op: "LTE", value: 0.6, agg: "MIN" },
      ],
      params: [
        { key: "model", op: "EQ", value: "logreg" },
        { key: "lr", op: "LTE", value: 0.03 },
      ],
      tags: [
        { key: "team", value: "growth" },
        { key: "data", value: null },
      ],
      status: ["COMPLETED", "FAILED"],
      experiment: "churn-logreg",
      startedAfter: "2026-09-01T00:00:00Z",
      startedBefore: "2026-11-01T00:00:00Z",
      usedDatasetVersion: "churn/dataset_version:features@61bf1960bd93",
    });
  });

  it("reads numbers, booleans, negative and exponent values and quoted keys", () => {
    expect(parseFilter("param.`a.b` != -2.5e-3 and param.flag = true and param.name = 'x y'").params).toEqual([
      { key: "a.b", op: "NEQ", value: -0.0025 },
      { key: "flag", op: "EQ", value: true },
      { key: "name", op: "EQ", value: "x y" },
    ]);
    expect(parseFilter("status = running")).toEqual({ status: ["RUNNING"] });
    expect(parseFilter("")).toEqual({});
  });

  it("names what is wrong", () => {
    const bad: [string, RegExp][] = [
      ["metric.loss > high", /not a number/],
      ["status = done", /unknown status done/],
      ["colour = red", /unknown name colour/],
      ["metric.loss >", /expected a number at the end/],
      ["metric.loss > 1 or metric.acc > 2", /expected "and", got or/],
      ["tag.team > a", /only = is supported/],
      ['param.x = "open', /unclosed quote/],
      ["metric.loss.median > 1", /expected min, max or latest/],
    ];
    for (const [text, message] of bad) {
      expect(() => parseFilter(text), text).toThrow(FilterError);
      expect(() => parseFilter(text), text).toThrow(message);
    }
  });

  it("formats a filter back to text that parses to the same filter", () => {
    const texts = [
      "metric.loss.min < 0.6 and param.model = logreg and tag.data and status in (completed)",
      'param.note = "two words" and param.`a b` = 3 and tag.t = "and" and experiment = e1',
      "started >= 2026-09-01T00:00:00Z and started < 2026-10-01T00:00:00Z and dataset = p/dataset_version:d@v1.2",
    ];
    for (const t of texts) {
      const f = parseFilter(t);
      expect(parseFilter(formatFilter(f))).toEqual(f);
    }
  });
});
