-- holdfast's order store. Created by PostgresStore::connect when missing.
-- Text columns use the "C" collation: ids compare byte by byte, as Rust's String does.

-- The idempotency guarantee: one row per applied key. `discriminator` is the event id for
-- statuses that repeat (billed, refunded) and '' for the others.
CREATE TABLE IF NOT EXISTS holdfast_keys (
    order_id text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    discriminator text COLLATE "C" NOT NULL DEFAULT '',
    event_id text COLLATE "C" NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, status, discriminator)
);

-- The wide table: one column group (event id, business time in ms, amount) per status that
-- happens at most once; the smaller (at, event, amount) wins a column.
CREATE TABLE IF NOT EXISTS holdfast_orders (
    order_id text COLLATE "C" PRIMARY KEY,
    user_id text COLLATE "C" NOT NULL DEFAULT '',
    created_event text COLLATE "C",
    created_at bigint,
    created_amount bigint CHECK (created_amount >= 0),
    paid_event text COLLATE "C",
    paid_at bigint,
    paid_amount bigint CHECK (paid_amount >= 0),
    shipped_event text COLLATE "C",
    shipped_at bigint,
    shipped_amount bigint CHECK (shipped_amount >= 0),
    received_event text COLLATE "C",
    received_at bigint,
    received_amount bigint CHECK (received_amount >= 0),
    completed_event text COLLATE "C",
    completed_at bigint,
    completed_amount bigint CHECK (completed_amount >= 0),
    cancelled_event text COLLATE "C",
    cancelled_at bigint,
    cancelled_amount bigint CHECK (cancelled_amount >= 0)
);

-- Statuses that repeat: one entry per event id.
CREATE TABLE IF NOT EXISTS holdfast_bills (
    order_id text COLLATE "C" NOT NULL,
    event_id text COLLATE "C" NOT NULL,
    at_ms bigint NOT NULL,
    amount bigint CHECK (amount >= 0),
    PRIMARY KEY (order_id, event_id)
);

CREATE TABLE IF NOT EXISTS holdfast_refunds (
    order_id text COLLATE "C" NOT NULL,
    event_id text COLLATE "C" NOT NULL,
    at_ms bigint NOT NULL,
    amount bigint CHECK (amount >= 0),
    PRIMARY KEY (order_id, event_id)
);

-- Each partition's progress under `progress = store`, written in the same transaction as the
-- effects: the generation that claimed the partition, the commit point (the next offset to
-- read) and the finished offsets above it in the tracker's encoding. `scope` names the
-- consumer group and topic.
CREATE TABLE IF NOT EXISTS holdfast_progress (
    scope text COLLATE "C" NOT NULL,
    partition integer NOT NULL,
    owner integer NOT NULL,
    next_offset bigint,
    finished text,
    PRIMARY KEY (scope, partition)
);
