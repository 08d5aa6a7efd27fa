-- Help-center articles for samples/support.yaml, on the worker's `support` connection.
-- Needs PostgreSQL with the pgvector extension (0.5.0 or later for the HNSW index).
-- Safe to run again: objects are created only when missing and seed rows are never duplicated.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f samples/support/schema.sql
--
-- where DATABASE_URL names the database that the `support` connection points at.
--
-- The seed articles have no embeddings yet (embedding IS NULL), and the workflow's retrieval
-- query skips such rows. Fill the column with the same model the workflow embeds questions with
-- (mistral-embed, 1024 dimensions), because distances between vectors of different models mean
-- nothing.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS support_docs (
    id         integer      PRIMARY KEY,
    slug       text         NOT NULL UNIQUE,
    title      text         NOT NULL,
    body       text         NOT NULL,
    path       text         NOT NULL,  -- where the article lives in the help center
    embedding  vector(1024),           -- mistral-embed; NULL until the article is embedded
    updated_at timestamptz  NOT NULL DEFAULT now()
);

-- The workflow orders by `<->` (Euclidean distance), so the index uses the matching L2 operator
-- class. For a few hundred articles a sequential scan is fast enough, so the index pays off
-- only with many more.
CREATE INDEX IF NOT EXISTS support_docs_embedding_hnsw
    ON support_docs USING hnsw (embedding vector_l2_ops);

INSERT INTO support_docs (id, slug, title, body, path) VALUES
    (1, 'reset-password', 'Reset your password',
     'Open the sign-in page and choose "Forgot password". Enter the email address of your account '
     'and we send a reset link that is valid for 30 minutes. If the email does not arrive, check '
     'the spam folder, then ask an administrator of your workspace to confirm the address on file. '
     'Accounts that sign in with single sign-on reset their password with their identity provider.',
     '/help/account/reset-password'),
    (2, 'two-factor-authentication', 'Turn on two-factor authentication',
     'Go to Settings > Security and choose "Enable two-factor authentication". Scan the QR code with '
     'an authenticator app and enter the six-digit code to confirm. Store the ten recovery codes in a '
     'safe place: each one signs you in once if you lose your phone. Workspace owners can require '
     'two-factor authentication for every member.',
     '/help/account/two-factor'),
    (3, 'change-plan', 'Upgrade, downgrade or cancel your plan',
     'Workspace owners change the plan under Settings > Billing. An upgrade takes effect at once and '
     'is charged pro rata. A downgrade or a cancellation takes effect at the end of the current '
     'billing period, and data stays available until then. Annual plans are refunded pro rata only '
     'within the first 30 days.',
     '/help/billing/change-plan'),
    (4, 'invoices', 'Download invoices and update billing details',
     'Every invoice is listed under Settings > Billing > Invoices as a PDF. To change the company '
     'name, address or VAT number printed on future invoices, edit the billing details on the same '
     'page. Invoices that were already issued cannot be changed; contact support for a corrected copy.',
     '/help/billing/invoices'),
    (5, 'export-data', 'Export your data',
     'Under Settings > Data, choose "Export workspace". The export contains every project, comment '
     'and attachment as a ZIP archive of JSON files. Large workspaces can take up to an hour; we send '
     'an email with a download link that stays valid for 7 days.',
     '/help/data/export'),
    (6, 'api-rate-limits', 'API rate limits',
     'The REST API allows 100 requests per minute per token on the Free plan and 1,000 on Pro and '
     'Enterprise. A request over the limit receives HTTP 429 with a Retry-After header giving the '
     'seconds to wait. Use one token per integration, so that one busy integration cannot slow down '
     'the others.',
     '/help/developers/rate-limits'),
    (7, 'single-sign-on', 'Set up single sign-on (SAML)',
     'Single sign-on is available on the Enterprise plan. Under Settings > Security > SSO, upload '
     'the metadata XML of your identity provider and map the email attribute. Test the connection '
     'with one account before you enforce SSO for the whole workspace, so that nobody is locked out.',
     '/help/security/sso'),
    (8, 'sync-delays', 'Changes do not appear on other devices',
     'Changes usually sync within a few seconds. If a device shows old data, check that it is online '
     'and signed in to the same workspace, then pull down to refresh. Offline edits sync when the '
     'device reconnects; if two people edited the same item, both versions are kept in its history.',
     '/help/troubleshooting/sync')
ON CONFLICT (id) DO NOTHING;
