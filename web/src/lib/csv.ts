/**
 * CSV (RFC 4180) for spreadsheets: fields with a comma, quote or line break are quoted; a text
 * that a spreadsheet would run as a formula (starting with = + - @ or a tab) is prefixed with '
 * so that opening an export runs nothing.
 */
export function csvField(v: unknown): string {
  let s = v === null || v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v);
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCsv(header: string[], rows: unknown[][]): string {
  return [header, ...rows].map((r) => r.map(csvField).join(",")).join("\r\n") + "\r\n";
}
