-- Numbers a client must learn at once (model version numbers) are allocated when the write path
-- accepts the event (`model.version.registered`), not when the projector reaches it
-- (docs/write-path.md). One row per accepted event; a retry of the same event id finds its row
-- and gets the same number, so re-sending cannot make a second version.
--
-- This is write-side state (like public.events), not a read model: `rebuild` leaves it alone.
-- The number is also written into the event's payload (`version`), so the event store alone
-- still determines the read models.
-- `sequence` names what is numbered: the subject for model versions (`model:churn`).
CREATE TABLE public.event_numbers (
    event_id    uuid        PRIMARY KEY,
    project     text        NOT NULL,
    sequence    text        NOT NULL,
    number      integer     NOT NULL CHECK (number >= 1),
    reserved_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (project, sequence, number)
);

-- Versions registered before numbering moved to the write path keep the numbers the projector
-- gave them.
INSERT INTO public.event_numbers (event_id, project, sequence, number)
SELECT event_id, project, 'model:' || model, number FROM rm.model_versions
ON CONFLICT DO NOTHING;
