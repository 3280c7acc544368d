// The token lives in this tab's sessionStorage only: never in a URL, a cookie or a log line.
// A sign-in link (`up` prints one) carries a one-time code in the fragment (`#signin=<code>`),
// which the browser never sends to a server; the page swaps it for the token with a POST and
// removes it from the address bar at once.

const KEY = "studbook.token";

export function getToken(): string | null {
  return sessionStorage.getItem(KEY);
}

export function setToken(token: string): void {
  sessionStorage.setItem(KEY, token);
}

export function clearToken(): void {
  sessionStorage.removeItem(KEY);
}

/** The one-time code of a sign-in link's fragment, or null. */
export function signInCode(hash: string): string | null {
  const m = /^#signin=([A-Za-z0-9_-]{16,128})$/.exec(hash);
  return m ? m[1] : null;
}

export class SignInError extends Error {}

/** Swap a one-time sign-in code for the token (POST /ui/signin). */
export async function redeem(code: string): Promise<string> {
  const r = await fetch("/ui/signin", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ code }),
    cache: "no-store",
  });
  const body = (await r.json().catch(() => ({}))) as { token?: string; error?: string };
  if (!r.ok || !body.token) {
    throw new SignInError(body.error ?? `sign-in failed (HTTP ${r.status})`);
  }
  return body.token;
}
