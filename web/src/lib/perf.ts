// Named timings (performance.measure) the benchmark reads: `studbook:<name>`, from `start(name)`
// to `end(name)` (after the DOM has been updated and painted once).

export function start(name: string): void {
  performance.clearMarks(`studbook:${name}:start`);
  performance.mark(`studbook:${name}:start`);
}

export function end(name: string): void {
  const mark = `studbook:${name}:start`;
  if (!performance.getEntriesByName(mark).length) return;
  requestAnimationFrame(() => {
    performance.measure(`studbook:${name}`, mark);
    performance.clearMarks(mark);
  });
}
