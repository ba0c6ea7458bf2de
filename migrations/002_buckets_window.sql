-- 002_buckets_window.sql: sharded stock and limited-time coupons.
--
-- Additive only, so that replicas built before it (which know nothing of
-- buckets or windows) keep claiming unsharded coupons on the migrated
-- database during a rolling upgrade: every new column is nullable or has a
-- default, and what an old replica writes (INSERT INTO coupons (id, total),
-- INSERT INTO claims without a bucket, UPDATE coupons SET claimed = ...)
-- still means what it meant. Where an old replica would do something wrong
-- on a coupon that uses the new features, a constraint makes its write fail
-- instead (it answers 503, nothing written): see the two guards below.

-- How many buckets the coupon's stock is split into. 1: the coupons row is
-- the stock, as before (no coupon_buckets rows). Above 1: the stock lives in
-- coupon_buckets, and coupons.total is their sum.
ALTER TABLE coupons
    ADD COLUMN buckets integer NOT NULL DEFAULT 1
        CONSTRAINT coupons_buckets_range CHECK (buckets BETWEEN 1 AND 64);

-- A sharded coupon's claims are counted in its buckets, never in the coupons
-- row. This is also the guard against an old replica: it knows only the
-- coupons row and would count a sharded coupon's claims there a second
-- time, past the buckets' stock; its UPDATE fails this CHECK instead.
ALTER TABLE coupons
    ADD CONSTRAINT coupons_sharded_counts_in_buckets
        CHECK (buckets = 1 OR claimed = 0);

-- The claim window, judged by this server's clock (statement_timestamp())
-- inside the claim's conditional UPDATE; NULL: no bound on that side.
ALTER TABLE coupons
    ADD COLUMN starts_at timestamptz,
    ADD COLUMN ends_at   timestamptz,
    ADD CONSTRAINT coupons_window_ordered
        CHECK (starts_at IS NULL OR ends_at IS NULL OR starts_at < ends_at);

-- One row per bucket of a sharded coupon. Each bucket is claimed under a lock
-- of its own (resource ID#b), so it has its own fence high-water mark and its
-- own counter, which orders its claims (claims.seq) in commit order.
CREATE TABLE coupon_buckets (
    coupon_id  text    NOT NULL REFERENCES coupons (id),
    bucket     integer NOT NULL CHECK (bucket BETWEEN 0 AND 63),
    total      integer NOT NULL CHECK (total >= 0),
    claimed    integer NOT NULL DEFAULT 0 CHECK (claimed >= 0),
    -- As coupons.last_fence, for this bucket's lock.
    last_fence bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (coupon_id, bucket),
    CONSTRAINT coupon_buckets_claimed_within_total CHECK (claimed <= total)
);

-- The bucket a claim was counted in; NULL for an unsharded coupon (which is
-- what an old replica's INSERT leaves, rightly: it only claims those). Then
-- seq is the bucket's counter, so seq orders claims per (coupon, bucket).
-- The foreign key is not checked for NULL (MATCH SIMPLE). One claim per user
-- stays global: claims_one_per_user is on (coupon_id, user_id), whatever the
-- bucket.
ALTER TABLE claims
    ADD COLUMN bucket integer,
    ADD CONSTRAINT claims_bucket_exists FOREIGN KEY (coupon_id, bucket)
        REFERENCES coupon_buckets (coupon_id, bucket);

-- The window, for writers that do not know it (an old replica): an UPDATE
-- that raises a windowed coupon's counter outside its window fails. The
-- service's own UPDATE carries the window in its WHERE with the same clock
-- (statement_timestamp() is one value for the whole statement, triggers
-- included), so for it this never fires; it is the old replica's guard. The
-- WHEN clause keeps the trigger away from coupons without a window.
CREATE FUNCTION coupons_claim_in_window() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.starts_at IS NOT NULL AND statement_timestamp() < NEW.starts_at)
       OR (NEW.ends_at IS NOT NULL AND statement_timestamp() >= NEW.ends_at)
    THEN
        RAISE EXCEPTION 'coupon % claimed outside its window', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER coupons_claim_in_window
    BEFORE UPDATE OF claimed ON coupons
    FOR EACH ROW
    WHEN (NEW.claimed > OLD.claimed
          AND (NEW.starts_at IS NOT NULL OR NEW.ends_at IS NOT NULL))
    EXECUTE FUNCTION coupons_claim_in_window();
