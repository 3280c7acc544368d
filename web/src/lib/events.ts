// Event types of schema/events/ to suggest in the audit filter (a unit test checks that each
// exists; the audit page adds the types of the events it has loaded).
export const EVENT_TYPES = [
  "annotation.added",
  "dataset.created",
  "dataset.version.created",
  "model.alias.removed",
  "model.alias.set",
  "model.created",
  "model.version.approved",
  "model.version.deployed",
  "model.version.registered",
  "model.version.rejected",
  "model.version.undeployed",
  "openlineage.event.reported",
  "project.created",
  "run.diff.recorded",
  "run.finished",
  "run.input.used",
  "run.metrics.logged",
  "run.output.produced",
  "run.params.logged",
  "run.started",
  "run.tags.set",
  "subject.redacted",
];

/** A one-line summary of a payload for the audit table. */
export function summary(payload: unknown, max = 140): string {
  const text = JSON.stringify(payload) ?? "";
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}
