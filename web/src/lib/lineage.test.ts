import { describe, expect, it } from "vitest";
import type { Placed } from "./lineage";
import { fitView, impactHighlight, label, layout, merge, sliderTime, size, type LineageEdge, type LineageNode } from "./lineage";

function chain(n: number): { nodes: { id: string; label: string }[]; edges: LineageEdge[] } {
  const nodes = Array.from({ length: n }, (_, i) => ({ id: `n${i}`, label: `node ${i}` }));
  const edges = nodes.slice(1).map((x, i) => ({ source: `n${i}`, destination: x.id, type: "DERIVED", role: null }));
  return { nodes, edges };
}

describe("lineage layout", () => {
  it("puts every edge's destination to the right of its source and boxes never overlap", () => {
    const nodes = [...chain(6).nodes, { id: "x", label: "side" }, { id: "y", label: "other side" }];
    const edges = [...chain(6).edges, { source: "n1", destination: "x", type: "INPUT", role: "train" }, { source: "x", destination: "n5", type: "OUTPUT", role: null }, { source: "n2", destination: "y", type: "INPUT", role: null }];
    const placed = layout(nodes, edges);
    expect(placed.size).toBe(nodes.length);
    for (const e of edges) expect(placed.get(e.destination)!.x).toBeGreaterThan(placed.get(e.source)!.x);
    const boxes = [...placed.values()];
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i];
        const b = boxes[j];
        const apart = Math.abs(a.x - b.x) * 2 >= a.width + b.width || Math.abs(a.y - b.y) * 2 >= a.height + b.height;
        expect(apart, `${a.id} overlaps ${b.id}`).toBe(true);
      }
    }
  });

  it("ignores edges to nodes outside the page and self-loops", () => {
    const placed = layout([{ id: "a", label: "a" }], [{ source: "a", destination: "gone", type: "INPUT", role: null }, { source: "a", destination: "a", type: "DERIVED", role: null }]);
    expect([...placed.keys()]).toEqual(["a"]);
  });

  // How fast is bench/ui_render.py's to measure (1 s target for layout and render); this checks
  // that the settings it uses for big graphs keep the layout's promises.
  it("lays out 1000 nodes keeping its promises", () => {
    const nodes = Array.from({ length: 1000 }, (_, i) => ({ id: `n${i}`, label: `dataset@${i}` }));
    const edges: LineageEdge[] = [];
    for (let i = 1; i < 1000; i++) {
      edges.push({ source: `n${Math.floor((i - 1) / 3)}`, destination: `n${i}`, type: "INPUT", role: null });
      if (i > 10 && i % 7 === 0) edges.push({ source: `n${i - 9}`, destination: `n${i}`, type: "DERIVED", role: null });
    }
    const placed = layout(nodes, edges);
    expect(placed.size).toBe(1000);
    for (const e of edges) expect(placed.get(e.destination)!.x).toBeGreaterThan(placed.get(e.source)!.x);
    const byRank = new Map<number, Placed[]>();
    for (const p of placed.values()) byRank.set(p.x, [...(byRank.get(p.x) ?? []), p]);
    for (const column of byRank.values()) {
      const ys = column.map((p) => p.y).sort((a, b) => a - b);
      for (let i = 1; i < ys.length; i++) expect(ys[i] - ys[i - 1]).toBeGreaterThanOrEqual(30);
    }
  });

  it("fits the view to the boxes", () => {
    const boxes: Placed[] = [
      { id: "a", x: 0, y: 0, width: 100, height: 20 },
      { id: "b", x: 300, y: 100, width: 100, height: 20 },
    ];
    const v = fitView(boxes, 440, 500, 20, 0.05, 3);
    expect(v.zoom).toBeCloseTo(1, 9); // 400 wide into 400 (440 less padding)
    expect(v.pan.x).toBeCloseTo(20 + 50, 9); // the left edge (-50) lands at the padding
    const tiny = fitView([boxes[0]], 2000, 2000, 20, 0.05, 3);
    expect(tiny.zoom).toBe(3);
    expect(fitView([], 100, 100, 0, 0.1, 2)).toEqual({ zoom: 1, pan: { x: 0, y: 0 } });
  });
});

describe("lineage model", () => {
  const mv = (id: string, aliases: string[]): LineageNode => ({ id, type: "MODEL_VERSION", depth: 0, entity: { aliases: aliases.map((alias) => ({ alias })) } });

  it("merges pages, labels nodes and sizes their boxes", () => {
    const a: LineageNode = { id: "p/run:r1", type: "RUN", depth: 1, entity: { name: "baseline" } };
    const walk = merge([
      { nodes: [mv("p/model_version:m@2", ["production", "staging"]), a], edges: [{ source: "p/run:r1", destination: "p/model_version:m@2", type: "TRAINED", role: null }], truncated: false, totalNodes: 3, depthReached: 1 },
      { nodes: [a, { id: "p/dataset_version:features@61bf1960bd93aa", type: "DATASET_VERSION", depth: 2, entity: null }], edges: [{ source: "p/run:r1", destination: "p/model_version:m@2", type: "TRAINED", role: null }], truncated: true, totalNodes: 3, depthReached: 2 },
    ]);
    expect(walk.nodes.length).toBe(3);
    expect(walk.edges.length).toBe(1);
    expect(walk.truncated).toBe(true);
    expect(walk.depthReached).toBe(2);
    expect(walk.nodes.map(label)).toEqual(["m@2 [production, staging]", "baseline", "features@61bf1960"]);
    expect(size("x").width).toBe(60);
    expect(size("x".repeat(500)).width).toBe(260);
  });

  it("highlights the model versions holding the alias and their deployments", () => {
    const impact = {
      modelVersions: [
        { modelVersion: { id: "p/model_version:m@1" }, aliases: ["production"], deployments: [{ id: "p/deployment:m/prod" }] },
        { modelVersion: { id: "p/model_version:m@2" }, aliases: ["staging"], deployments: [] },
        { modelVersion: { id: "p/model_version:m@3" }, aliases: [], deployments: [{ id: "p/deployment:m/dev" }] },
      ],
      deployments: [],
    };
    expect([...impactHighlight(impact, "production")]).toEqual(["p/model_version:m@1", "p/deployment:m/prod"]);
    expect([...impactHighlight(impact, null)]).toEqual(["p/model_version:m@1", "p/deployment:m/prod", "p/model_version:m@2"]);
    expect(sliderTime(Date.UTC(2026, 8, 30, 12, 0, 0, 400))).toBe("2026-09-30T12:00:00Z");
  });
});
