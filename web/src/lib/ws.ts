// A minimal graphql-transport-ws client for one subscription (the run page's live metrics).
// The token goes in `connection_init`, never in the URL.

import { getToken } from "./auth";

export function subscribe<T>(
  query: string,
  variables: Record<string, unknown>,
  onNext: (data: T) => void,
  onError: (message: string) => void,
): () => void {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`;
  const ws = new WebSocket(url, "graphql-transport-ws");
  let closed = false;
  ws.onopen = () => {
    const token = getToken();
    ws.send(JSON.stringify({ type: "connection_init", payload: token ? { authorization: `Bearer ${token}` } : {} }));
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(String(ev.data)) as { type: string; id?: string; payload?: unknown };
    if (msg.type === "connection_ack") {
      ws.send(JSON.stringify({ id: "1", type: "subscribe", payload: { query, variables } }));
    } else if (msg.type === "next") {
      const p = msg.payload as { data?: T; errors?: { message: string }[] };
      if (p.errors?.length) onError(p.errors[0].message);
      else if (p.data) onNext(p.data);
    } else if (msg.type === "error") {
      const errs = msg.payload as { message: string }[];
      onError(errs?.[0]?.message ?? "subscription failed");
    } else if (msg.type === "ping") {
      ws.send(JSON.stringify({ type: "pong" }));
    }
  };
  ws.onclose = (ev) => {
    if (!closed && ev.code !== 1000) onError(`live updates stopped (${ev.code} ${ev.reason})`);
  };
  return () => {
    closed = true;
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ id: "1", type: "complete" }));
    ws.close(1000);
  };
}
