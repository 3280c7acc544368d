/**
 * Exponential moving average with bias correction (as TensorBoard's smoothing slider does):
 * ``weight`` 0 leaves the series as it is, 0.99 smooths hard. Non-finite values pass through
 * and do not disturb the average.
 */
export function ema(values: (number | null)[], weight: number): (number | null)[] {
  if (weight <= 0) return values.slice();
  const w = Math.min(weight, 0.999);
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return v;
    last = last * w + (1 - w) * v;
    n++;
    return last / (1 - Math.pow(w, n));
  });
}
