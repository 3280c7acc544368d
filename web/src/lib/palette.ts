const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];

/** A distinct colour per series index (golden-angle hues beyond the first ten). */
export function seriesColour(i: number): string {
  return i < COLOURS.length ? COLOURS[i] : `hsl(${(i * 137.508) % 360} 65% 45%)`;
}
