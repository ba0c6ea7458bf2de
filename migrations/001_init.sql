-- 001_init.sql: the two tables every claim touches.
--
-- coupons is the source of truth for stock. claimed only ever moves through
-- the fenced, conditional UPDATE in service/store.c, and the CHECK below is the
-- last line of defence if every guard above it were wrong.
CREATE TABLE coupons (
    id         text        PRIMARY KEY
                           CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    total      integer     NOT NULL CHECK (total >= 0),
    claimed    integer     NOT NULL DEFAULT 0 CHECK (claimed >= 0),
    -- Highest fencing token accepted for this coupon. A lease's first write
    -- carrying fence f is accepted only when f > last_fence (strictly: after
    -- Redis lost its counter a new lease may draw a fence already used), and
    -- then f becomes last_fence; the same lease's later writes in the same
    -- transaction (a batch) may find last_fence = f, their own. The naive and
    -- atomic modes take no lock and leave it alone.
    last_fence bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT coupons_claimed_within_total CHECK (claimed <= total)
);

-- One row per coupon handed out. UNIQUE (coupon_id, user_id) makes a retried
-- claim harmless: the second INSERT cannot happen, the first claim is returned.
CREATE TABLE claims (
    id         bigserial   PRIMARY KEY,
    coupon_id  text        NOT NULL REFERENCES coupons (id),
    user_id    text        NOT NULL,
    -- The fencing token of the lease the claim was written under; NULL in the
    -- naive and atomic modes, which take no lock.
    fence      bigint,
    -- The value of coupons.claimed this claim produced. The UPDATE that
    -- produced it holds the coupon's row lock until COMMIT, so seq orders the
    -- claims of one coupon in commit order (naive mode, which does not hold
    -- that lock, is free to repeat a seq: that is its bug).
    seq        integer     NOT NULL,
    instance   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT claims_one_per_user UNIQUE (coupon_id, user_id)
);

CREATE INDEX claims_by_coupon_seq ON claims (coupon_id, seq);
