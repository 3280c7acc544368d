// GraphiQL from the package's own assets (no CDN), sending the tab's Studbook token (session
// storage, set by signing in on /) with every request, subscriptions included.

import { createElement } from "react";
import { createRoot } from "react-dom/client";
import { GraphiQL } from "graphiql";
import { getOperationAST, parse } from "graphql";
import "graphiql/style.css";
import { getToken } from "../lib/auth";

type Params = { query: string; variables?: unknown; operationName?: string | null };

function isSubscription(p: Params): boolean {
  try {
    return getOperationAST(parse(p.query), p.operationName ?? undefined)?.operation === "subscription";
  } catch {
    return false;
  }
}

async function post(p: Params): Promise<unknown> {
  const token = getToken();
  const r = await fetch("/graphql", {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(p),
  });
  return r.json();
}

/** The subscription's results over graphql-transport-ws, as an async iterator. */
async function* subscription(p: Params): AsyncGenerator<unknown> {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`, "graphql-transport-ws");
  const queue: unknown[] = [];
  let wake: (() => void) | null = null;
  let done = false;
  const push = (v: unknown) => {
    queue.push(v);
    wake?.();
  };
  ws.onopen = () => {
    const token = getToken();
    ws.send(JSON.stringify({ type: "connection_init", payload: token ? { authorization: `Bearer ${token}` } : {} }));
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(String(ev.data)) as { type: string; payload?: unknown };
    if (msg.type === "connection_ack") ws.send(JSON.stringify({ id: "1", type: "subscribe", payload: p }));
    else if (msg.type === "next") push(msg.payload);
    else if (msg.type === "error") push({ errors: msg.payload });
    else if (msg.type === "complete") {
      done = true;
      wake?.();
    } else if (msg.type === "ping") ws.send(JSON.stringify({ type: "pong" }));
  };
  ws.onclose = (ev) => {
    if (!done && ev.code !== 1000) push({ errors: [{ message: `connection closed (${ev.code} ${ev.reason})` }] });
    done = true;
    wake?.();
  };
  try {
    for (;;) {
      while (queue.length) yield queue.shift();
      if (done) return;
      await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
    }
  } finally {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ id: "1", type: "complete" }));
    ws.close(1000);
  }
}

const fetcher = (p: Params) => (isSubscription(p) ? subscription(p) : post(p));

const DEFAULT_QUERY = `# Studbook's GraphQL API: the cookbook (docs/graphql.md) has a query for every question.
{
  modelVersionByAlias(project: "churn", model: "churn-clf", alias: "production") {
    id number approved run { id name }
  }
}
`;

const root = document.getElementById("graphiql")!;
if (!getToken()) {
  const note = document.createElement("div");
  note.setAttribute("style", "padding:8px 12px;background:#fffbeb;border-bottom:1px solid #fde68a;font:14px system-ui");
  note.innerHTML = 'Not signed in: queries need a token. <a href="/#/signin">Sign in</a> in this tab, then come back here.';
  document.body.insertBefore(note, root);
}
createRoot(root).render(
  createElement(GraphiQL, { fetcher: fetcher as never, defaultQuery: DEFAULT_QUERY, defaultEditorToolsVisibility: false }),
);
