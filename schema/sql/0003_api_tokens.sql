-- API tokens for the gateway and the GraphQL API. Only a SHA-256 of each token is stored (tokens
-- are 256-bit random strings, so a fast hash is enough); the token itself is shown once at creation.
CREATE TABLE public.api_tokens (
    token_id        text        PRIMARY KEY,
    name            text        NOT NULL,
    token_hash      bytea       NOT NULL UNIQUE,
    scopes          text[]      NOT NULL CHECK (scopes <@ ARRAY['read', 'write', 'admin']),
    projects        text[]      NOT NULL,   -- project names, or '*' for every project
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);
