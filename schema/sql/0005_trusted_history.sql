-- Trusted history: who recorded an event is the server's fact, and the hash chain covers it.
--
-- principal_id / principal: the token that sent the event (its id and name), as authenticated by
-- the gateway or the API; NULL id for an event whose sender could not be authenticated (produced
-- straight to Kafka without the gateway's signature). `actor` stays as the client's claim.
-- hash_version 2 rows commit to each payload leaf with its own random salt (`salts`), so a
-- redaction can erase a value, keep its commitment (`redacted`) and the row still verifies.
ALTER TABLE public.events
    ADD COLUMN principal_id  text,
    ADD COLUMN principal     text,
    ADD COLUMN hash_version  smallint NOT NULL DEFAULT 1,
    ADD COLUMN salts         jsonb,
    ADD COLUMN redacted      jsonb;
ALTER TABLE public.events ALTER COLUMN hash_version SET DEFAULT 2;
CREATE INDEX events_principal_recorded ON public.events (project, principal, recorded_at);

-- Secrets the services share through the database, e.g. the key that signs the principal the
-- gateway attaches to each Kafka record (so the projector can tell it from a client's claim).
CREATE TABLE public.server_keys (
    name            text        PRIMARY KEY,
    secret          bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Governance decisions (approve/reject) need their own scope.
ALTER TABLE public.api_tokens DROP CONSTRAINT api_tokens_scopes_check;
ALTER TABLE public.api_tokens
    ADD CONSTRAINT api_tokens_scopes_check CHECK (scopes <@ ARRAY['read', 'write', 'approve', 'admin']);

-- Who decided, as authenticated, beside who the client said it was.
ALTER TABLE rm.approvals ADD COLUMN claimed_by text;
ALTER TABLE rm.approvals ADD COLUMN reviewer_id text;
ALTER TABLE rm.model_versions ADD COLUMN registered_by_id text;
