-- The runner's settings as columns, each document's place in the run, per-neighbour costs, the
-- Pile's weights and per-task views (issue #5). Never edit an applied migration: add a new file.
ALTER TABLE runs ADD COLUMN selection VARCHAR DEFAULT 'nn';   -- nn | sift
ALTER TABLE runs ADD COLUMN split VARCHAR;                    -- split the test documents come from
ALTER TABLE runs ADD COLUMN val_portion DOUBLE;
ALTER TABLE runs ADD COLUMN seed BIGINT;
ALTER TABLE runs ADD COLUMN eval_at VARCHAR;                  -- all | comma-separated k
ALTER TABLE runs ADD COLUMN optimizer_state VARCHAR;          -- carry (original) | reset
ALTER TABLE runs ADD COLUMN distance_threshold DOUBLE;
ALTER TABLE runs ADD COLUMN search VARCHAR;                   -- exact | ivf-pq
ALTER TABLE runs ADD COLUMN nprobes INTEGER;
ALTER TABLE runs ADD COLUMN refine_factor INTEGER;
ALTER TABLE runs ADD COLUMN limit_docs BIGINT;
ALTER TABLE runs ADD COLUMN shard_index INTEGER;
ALTER TABLE runs ADD COLUMN shard_count INTEGER;
ALTER TABLE runs ADD COLUMN precision VARCHAR;
ALTER TABLE runs ADD COLUMN error VARCHAR;                    -- why a failed run failed

ALTER TABLE docs ADD COLUMN task VARCHAR;                     -- lm-eval task name
ALTER TABLE docs ADD COLUMN position INTEGER;                 -- index in the task's shuffled test subset
ALTER TABLE docs ADD COLUMN seq INTEGER;                      -- order this run evaluated it in
ALTER TABLE docs ADD COLUMN train_steps BIGINT;
ALTER TABLE docs ADD COLUMN skipped_chunks BIGINT;            -- 1-token or non-finite-loss chunks

ALTER TABLE neighbors ADD COLUMN train_s DOUBLE;              -- training on this neighbour
ALTER TABLE neighbors ADD COLUMN eval_s DOUBLE;               -- evaluating the document after it (NULL if not an eval point)

-- The Pile's effective-size weights (%), used for pile_all (spec §3.2); filled from the code's table.
CREATE TABLE pile_weights (
    set_name VARCHAR PRIMARY KEY,
    task     VARCHAR NOT NULL,
    weight   DOUBLE NOT NULL
);

-- Bits per byte before (k = 0) and after the run's last neighbour, per run and task, over
-- complete documents (the original drops documents with a short curve from both).
CREATE VIEW task_bpb AS
SELECT d.run_id, d.task, d.set_name,
       count(*)                                   AS docs,
       sum(d.bytes)                               AS bytes,
       -sum(c0.loglik) / sum(d.bytes) / ln(2)     AS bpb_before,
       -sum(cn.loglik) / sum(d.bytes) / ln(2)     AS bpb_after
FROM docs d
JOIN runs r   ON r.id = d.run_id
JOIN curve c0 ON c0.run_id = d.run_id AND c0.doc_id = d.doc_id AND c0.k = 0
JOIN curve cn ON cn.run_id = d.run_id AND cn.doc_id = d.doc_id AND cn.k = r.neighbors
WHERE d.complete
GROUP BY d.run_id, d.task, d.set_name;
