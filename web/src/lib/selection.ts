// Runs chosen for comparison, per project, kept for this tab (sessionStorage) across pages.

export const MAX_COMPARE = 100;

function key(project: string): string {
  return `studbook.selection.${project}`;
}

export function load(project: string): string[] {
  try {
    const v = JSON.parse(sessionStorage.getItem(key(project)) ?? "[]") as unknown;
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === "string").slice(0, MAX_COMPARE) : [];
  } catch {
    return [];
  }
}

export function save(project: string, ids: string[]): void {
  sessionStorage.setItem(key(project), JSON.stringify(ids.slice(0, MAX_COMPARE)));
}

/** Toggle ``id``; refuses to go past MAX_COMPARE (returns the list unchanged). */
export function toggle(ids: string[], id: string): string[] {
  if (ids.includes(id)) return ids.filter((x) => x !== id);
  return ids.length >= MAX_COMPARE ? ids : [...ids, id];
}
