-- Neighbour schedules (issue #39): a neighbour can be trained in any order, in several passes,
-- several per step. Never edit an applied migration: add a new file.

-- The pass each curve point ends a group of steps in (0: k = 0, the base model). k counts every
-- neighbour trained so far, passes before included; under dynamic evaluation k is the number of
-- passes over the prefix, so its pass is k.
ALTER TABLE curve ADD COLUMN pass INTEGER;
UPDATE curve SET pass = CASE
    WHEN k = 0 THEN 0
    WHEN run_id IN (SELECT id FROM runs WHERE method = 'dynamic-eval') THEN k
    ELSE 1 END;

-- One row per neighbour and pass: `rank` stays the search rank, `position` is its place in its
-- pass's training order, `pass` the pass, `k` the neighbours trained once it was (the curve point
-- it leads to). A neighbour trained in several passes has one row each, so the key gains `pass`;
-- DuckDB cannot change a primary key in place, so the table is rebuilt with its rows.
CREATE TABLE neighbors_008 (
    run_id      BIGINT NOT NULL,
    doc_id      VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    neighbor_id VARCHAR NOT NULL,
    distance    DOUBLE NOT NULL,             -- unsquared L2
    tokens      BIGINT,
    chunks      INTEGER,
    train_loss  DOUBLE,                      -- mean loss of the steps it was trained in
    train_s     DOUBLE,                      -- its share of its group's training seconds
    eval_s      DOUBLE,                      -- evaluating the document after it (NULL if not an eval point)
    jaccard13   DOUBLE,
    position    INTEGER,                     -- place in its pass's order (1: trained first)
    pass        INTEGER NOT NULL DEFAULT 1,
    k           INTEGER,                     -- neighbours trained once it was, every pass counted
    PRIMARY KEY (run_id, doc_id, pass, rank)
);
-- Before schedules every neighbour was trained once, nearest first; a dynamic-evaluation row is
-- one pass over the prefix (its rank is the pass).
INSERT INTO neighbors_008
SELECT n.run_id, n.doc_id, n.rank, n.neighbor_id, n.distance, n.tokens, n.chunks, n.train_loss,
       n.train_s, n.eval_s, n.jaccard13,
       CASE WHEN r.method = 'dynamic-eval' THEN 1 ELSE n.rank END,
       CASE WHEN r.method = 'dynamic-eval' THEN n.rank ELSE 1 END,
       n.rank
FROM neighbors n LEFT JOIN runs r ON r.id = n.run_id;
DROP TABLE neighbors;
ALTER TABLE neighbors_008 RENAME TO neighbors;

-- Bits per byte before and after the run's last point: k = neighbours x passes (ttt-nn's passes;
-- 1 for every other method and every run recorded before schedules).
CREATE OR REPLACE VIEW task_bpb AS
SELECT d.run_id, d.task, d.set_name,
       count(*)                                   AS docs,
       sum(d.bytes)                               AS bytes,
       -sum(c0.loglik) / sum(d.bytes) / ln(2)     AS bpb_before,
       -sum(cn.loglik) / sum(d.bytes) / ln(2)     AS bpb_after
FROM docs d
JOIN runs r   ON r.id = d.run_id
JOIN curve c0 ON c0.run_id = d.run_id AND c0.doc_id = d.doc_id AND c0.k = 0
JOIN curve cn ON cn.run_id = d.run_id AND cn.doc_id = d.doc_id
             AND cn.k = r.neighbors * coalesce(TRY_CAST(json_extract(r.config, '$.passes') AS INTEGER), 1)
WHERE d.complete
GROUP BY d.run_id, d.task, d.set_name;
