// The lineage explorer's model: the walk's pages merged into one graph, its layered layout
// (dagre: sources on the left, what came of them to the right), and the impact highlight.

import { Graph, layout as dagreLayout } from "@dagrejs/dagre";

export type NodeType = "DATASET_VERSION" | "RUN" | "MODEL_VERSION" | "DEPLOYMENT";

export interface LineageNode {
  id: string;
  type: NodeType;
  depth: number;
  entity: Record<string, unknown> | null;
}

export interface LineageEdge {
  source: string;
  destination: string;
  type: string;
  role: string | null;
}

export interface Walk {
  nodes: LineageNode[];
  edges: LineageEdge[];
  truncated: boolean;
  totalNodes: number;
  depthReached: number;
}

export interface Placed {
  id: string;
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Merge pages of a walk: nodes by id (first seen wins), edges once each. */
export function merge(pages: Walk[]): Walk {
  const nodes = new Map<string, LineageNode>();
  const edges = new Map<string, LineageEdge>();
  for (const p of pages) {
    for (const n of p.nodes) if (!nodes.has(n.id)) nodes.set(n.id, n);
    for (const e of p.edges) edges.set(`${e.source}|${e.destination}|${e.type}`, e);
  }
  const last = pages[pages.length - 1];
  return {
    nodes: [...nodes.values()],
    edges: [...edges.values()],
    truncated: pages.some((p) => p.truncated),
    totalNodes: last?.totalNodes ?? 0,
    depthReached: Math.max(0, ...pages.map((p) => p.depthReached)),
  };
}

/** What a node says on the graph: `churn-clf@2 [production]`, `features@61bf19`, a run's name. */
export function label(n: LineageNode): string {
  const e = n.entity ?? {};
  const key = n.id.slice(n.id.indexOf(":") + 1);
  switch (n.type) {
    case "MODEL_VERSION": {
      const aliases = ((e.aliases as { alias: string }[] | undefined) ?? []).map((a) => a.alias);
      return aliases.length ? `${key} [${aliases.join(", ")}]` : key;
    }
    case "RUN":
      return (e.name as string | undefined) || key;
    case "DATASET_VERSION": {
      const at = key.lastIndexOf("@");
      const version = key.slice(at + 1);
      return `${key.slice(0, at)}@${version.length > 12 ? version.slice(0, 8) : version}`;
    }
    default:
      return key;
  }
}

const CHAR_W = 6.6;

/** Box sizes for the layout, from the label's length. */
export function size(text: string): { width: number; height: number } {
  return { width: Math.max(60, Math.min(260, 16 + text.length * CHAR_W)), height: 30 };
}

// Above this many nodes the layout trades some compactness for time: longest-path ranking and a
// single ordering pass instead of network simplex and dagre's repeated ordering heuristic (about
// 3x faster on a 1,000-node walk, bench/ui_render.py).
export const BIG_GRAPH = 300;

/** Positions (box centres) of a layered left-to-right layout. Edges to missing nodes are ignored. */
export function layout(nodes: { id: string; label: string }[], edges: LineageEdge[], rankdir: "LR" | "TB" = "LR"): Map<string, Placed> {
  const g = new Graph({ multigraph: false });
  const big = nodes.length > BIG_GRAPH;
  g.setGraph({
    rankdir, nodesep: 14, ranksep: 60, edgesep: 6, marginx: 10, marginy: 10,
    ...(big ? { ranker: "longest-path" as const } : {}),
  });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of nodes) g.setNode(n.id, { ...size(n.label) });
  for (const e of edges) {
    if (e.source !== e.destination && g.hasNode(e.source) && g.hasNode(e.destination)) {
      g.setEdge(e.source, e.destination);
    }
  }
  dagreLayout(g, big ? { disableOptimalOrderHeuristic: true } : undefined);
  const out = new Map<string, Placed>();
  for (const id of g.nodes()) {
    const n = g.node(id);
    out.set(id, { id, x: n.x, y: n.y, width: n.width, height: n.height });
  }
  return out;
}

export interface ImpactResult {
  modelVersions: { modelVersion: { id: string }; aliases: string[]; deployments: { id: string }[] }[];
  deployments: { id: string }[];
}

/** The node ids an impact answer highlights: model versions holding an alias (all of them when
 * no alias was asked for) and their deployments. */
export function impactHighlight(impact: ImpactResult, alias: string | null): Set<string> {
  const out = new Set<string>();
  for (const mv of impact.modelVersions) {
    if (alias === null ? mv.aliases.length > 0 : mv.aliases.includes(alias)) {
      out.add(mv.modelVersion.id);
      for (const d of mv.deployments) out.add(d.id);
    }
  }
  return out;
}

/** A time slider's range: [first, last] as epoch ms, and a value's ISO text. */
export function sliderTime(ms: number): string {
  return new Date(Math.round(ms / 1000) * 1000).toISOString().replace(".000Z", "Z");
}

/** The zoom and pan that fit ``boxes`` (centres and sizes) in a ``width`` x ``height`` view. */
export function fitView(
  boxes: Placed[],
  width: number,
  height: number,
  padding: number,
  minZoom: number,
  maxZoom: number,
): { zoom: number; pan: { x: number; y: number } } {
  if (!boxes.length || width <= 0 || height <= 0) return { zoom: 1, pan: { x: 0, y: 0 } };
  const x0 = Math.min(...boxes.map((b) => b.x - b.width / 2));
  const x1 = Math.max(...boxes.map((b) => b.x + b.width / 2));
  const y0 = Math.min(...boxes.map((b) => b.y - b.height / 2));
  const y1 = Math.max(...boxes.map((b) => b.y + b.height / 2));
  const fit = Math.min((width - 2 * padding) / Math.max(1, x1 - x0), (height - 2 * padding) / Math.max(1, y1 - y0));
  const zoom = Math.max(minZoom, Math.min(maxZoom, fit));
  return {
    zoom,
    pan: { x: (width - (x1 - x0) * zoom) / 2 - x0 * zoom, y: (height - (y1 - y0) * zoom) / 2 - y0 * zoom },
  };
}
