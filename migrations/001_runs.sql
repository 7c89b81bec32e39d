-- Runs of tttnn and what each recorded. Never edit an applied migration: add a new file.
CREATE SEQUENCE run_ids START 1;

CREATE TABLE runs (
    id            BIGINT PRIMARY KEY DEFAULT nextval('run_ids'),
    name          VARCHAR,
    method        VARCHAR NOT NULL,          -- ttt-nn, smoke, ...
    status        VARCHAR NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at   TIMESTAMP,
    task          VARCHAR,
    model         VARCHAR,                   -- path of the HF model dir
    model_hash    VARCHAR,                   -- content hash of its weights
    encoder       VARCHAR,
    store         VARCHAR,
    store_version BIGINT,                    -- Lance table version searched
    neighbors     INTEGER,
    lr            DOUBLE,
    max_length    INTEGER,
    device        VARCHAR,
    encoder_provider VARCHAR,                -- ONNX Runtime execution provider that actually ran
    config        JSON NOT NULL,             -- every setting, typed
    tttnn_version VARCHAR NOT NULL,
    git_commit    VARCHAR
);

-- One row per evaluated document.
CREATE TABLE docs (
    run_id         BIGINT NOT NULL,
    doc_id         VARCHAR NOT NULL,
    set_name       VARCHAR,
    bytes          BIGINT NOT NULL,
    words          BIGINT NOT NULL,
    tokens         BIGINT NOT NULL,
    neighbors_used INTEGER NOT NULL,
    complete       BOOLEAN NOT NULL,         -- false: excluded from aggregates, as the original does
    retrieval_s    DOUBLE,
    train_s        DOUBLE,
    eval_s         DOUBLE,
    PRIMARY KEY (run_id, doc_id)
);

-- Log-likelihood of each document after training on its k nearest neighbours (k = 0: base model).
CREATE TABLE curve (
    run_id BIGINT NOT NULL,
    doc_id VARCHAR NOT NULL,
    k      INTEGER NOT NULL,
    loglik DOUBLE NOT NULL,
    PRIMARY KEY (run_id, doc_id, k)
);

-- The neighbours each document was trained on, nearest first.
CREATE TABLE neighbors (
    run_id      BIGINT NOT NULL,
    doc_id      VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    neighbor_id VARCHAR NOT NULL,
    distance    DOUBLE NOT NULL,             -- unsquared L2
    tokens      BIGINT,
    chunks      INTEGER,
    train_loss  DOUBLE,
    PRIMARY KEY (run_id, doc_id, rank)
);

-- Bits per byte per run, set and k over complete documents (micro-average, spec §3.2).
CREATE VIEW bpb_by_k AS
SELECT c.run_id, d.set_name, c.k,
       count(*)                                  AS docs,
       -sum(c.loglik) / sum(d.bytes) / ln(2)     AS bits_per_byte,
       exp(-sum(c.loglik) / sum(d.bytes))        AS byte_perplexity,
       exp(-sum(c.loglik) / sum(d.words))        AS word_perplexity
FROM curve c JOIN docs d USING (run_id, doc_id)
WHERE d.complete
GROUP BY c.run_id, d.set_name, c.k;
