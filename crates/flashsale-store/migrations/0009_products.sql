-- The product on sale (issue 14, item 3; OP-12..OP-15): a description, a price shown to
-- buyers (whole minor units of an ISO 4217 currency, both or neither), and the image the
-- operator uploaded, named by its type and the SHA-256 of its bytes. The same columns as the
-- embedded store's `sales`.
ALTER TABLE sales ADD COLUMN IF NOT EXISTS description  text;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS price_minor  bigint CHECK (price_minor > 0);
ALTER TABLE sales ADD COLUMN IF NOT EXISTS currency     text;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS image_kind   text;
ALTER TABLE sales ADD COLUMN IF NOT EXISTS image_sha256 text;

-- The images' bytes, one row per upload of different bytes, kept before a change makes the
-- sale show one (a change that is then refused leaves its row unreferenced, never served).
-- Every instance serves an image from here, whichever instance received it.
CREATE TABLE IF NOT EXISTS sale_images (
    sale_id bigint NOT NULL REFERENCES sales(id),
    sha256  text   NOT NULL,
    kind    text   NOT NULL,
    bytes   bytea  NOT NULL,
    PRIMARY KEY (sale_id, sha256)
);
