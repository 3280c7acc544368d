// Named timings (performance.measure) the benchmark reads: `studbook:<name>`, from `start(name)`
// to `end(name)`: at the next animation frame (after the DOM update, as it is painted), or at
// once with `sync` (pure computation, such as the lineage layout).

export function start(name: string): void {
  performance.clearMarks(`studbook:${name}:start`);
  performance.mark(`studbook:${name}:start`);
}

export function end(name: string, sync = false): void {
  const mark = `studbook:${name}:start`;
  if (!performance.getEntriesByName(mark).length) return;
  const measure = () => {
    performance.measure(`studbook:${name}`, mark);
    performance.clearMarks(mark);
  };
  if (sync) measure();
  else requestAnimationFrame(measure);
}
