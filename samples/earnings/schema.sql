-- Tables and seed data for samples/earnings.yaml, on the worker's `analytics` connection.
-- Safe to run again: tables are created only when missing and seed rows are never duplicated.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f samples/earnings/schema.sql
--
-- where DATABASE_URL names the database that the `analytics` connection points at.
-- The companies and their figures are made up.

CREATE TABLE IF NOT EXISTS quarterly_results (
    ticker      text           NOT NULL CHECK (ticker ~ '^[A-Z]{1,5}$'),
    quarter     text           NOT NULL CHECK (quarter ~ '^[0-9]{4}-Q[1-4]$'),
    revenue     numeric(18, 2) NOT NULL,  -- millions of USD
    eps         numeric(10, 4) NOT NULL,  -- diluted earnings per share, USD
    guidance    text           NOT NULL DEFAULT 'none'
                CHECK (guidance IN ('raised', 'maintained', 'lowered', 'withdrawn', 'none')),
    source      text           NOT NULL DEFAULT 'seed',  -- 'seed' or the id of the run that recorded it
    recorded_at timestamptz    NOT NULL DEFAULT now(),
    -- Quarters are written YYYY-Qn, so text order is time order.
    PRIMARY KEY (ticker, quarter)
);

-- One row per workflow run. The run id is the key, so a retried INSERT of the same run is a no-op.
CREATE TABLE IF NOT EXISTS earnings_summaries (
    run_id      text          PRIMARY KEY,
    ticker      text          NOT NULL,
    quarter     text          NOT NULL,
    risk_score  numeric(4, 3) NOT NULL CHECK (risk_score BETWEEN 0 AND 1),
    summary     text          NOT NULL,
    review      text          NOT NULL,  -- approved, rejected, timed_out or not_required
    alert_sent  boolean       NOT NULL,
    created_at  timestamptz   NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS earnings_summaries_ticker_quarter
    ON earnings_summaries (ticker, quarter, created_at DESC);

INSERT INTO quarterly_results (ticker, quarter, revenue, eps, guidance) VALUES
    -- ACME: steady growth.
    ('ACME', '2024-Q1', 1204.50, 1.12, 'maintained'),
    ('ACME', '2024-Q2', 1251.00, 1.19, 'raised'),
    ('ACME', '2024-Q3', 1298.75, 1.24, 'maintained'),
    ('ACME', '2024-Q4', 1402.10, 1.37, 'raised'),
    ('ACME', '2025-Q1', 1356.40, 1.28, 'maintained'),
    ('ACME', '2025-Q2', 1411.90, 1.33, 'maintained'),
    -- GLOBX: shrinking sales, one loss-making quarter.
    ('GLOBX', '2024-Q3', 842.00, 0.64, 'maintained'),
    ('GLOBX', '2024-Q4', 815.30, 0.41, 'lowered'),
    ('GLOBX', '2025-Q1', 771.80, -0.08, 'lowered'),
    ('GLOBX', '2025-Q2', 779.25, 0.05, 'maintained'),
    -- INTK: small and volatile.
    ('INTK', '2024-Q4', 96.40, 0.21, 'none'),
    ('INTK', '2025-Q1', 118.90, 0.35, 'raised'),
    ('INTK', '2025-Q2', 104.15, 0.18, 'withdrawn')
ON CONFLICT (ticker, quarter) DO NOTHING;
