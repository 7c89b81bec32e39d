-- Paired comparisons and what each neighbour was worth (issue #40). Never edit an applied
-- migration: add a new file.

-- Each run's last curve point (k = neighbors x passes) and the point its method reports: table1
-- reads dynamic evaluation after `dynamic_eval_pass` (the original's script reports pass 6 of 20),
-- every other method at its last point. Runs recorded before a setting existed take its default.
CREATE VIEW run_points AS
SELECT id AS run_id,
       neighbors * coalesce(TRY_CAST(json_extract(config, '$.passes') AS BIGINT), 1) AS k_last,
       CASE WHEN method = 'dynamic-eval'
            THEN least(coalesce(TRY_CAST(json_extract(config, '$.dynamic_eval_pass') AS BIGINT), 6),
                       neighbors)
            ELSE neighbors * coalesce(TRY_CAST(json_extract(config, '$.passes') AS BIGINT), 1)
       END AS k_reported
FROM runs;

CREATE OR REPLACE VIEW task_bpb AS
SELECT d.run_id, d.task, d.set_name,
       count(*)                                   AS docs,
       sum(d.bytes)                               AS bytes,
       -sum(c0.loglik) / sum(d.bytes) / ln(2)     AS bpb_before,
       -sum(cn.loglik) / sum(d.bytes) / ln(2)     AS bpb_after
FROM docs d
JOIN run_points p ON p.run_id = d.run_id
JOIN curve c0 ON c0.run_id = d.run_id AND c0.doc_id = d.doc_id AND c0.k = 0
JOIN curve cn ON cn.run_id = d.run_id AND cn.doc_id = d.doc_id AND cn.k = p.k_last
WHERE d.complete
GROUP BY d.run_id, d.task, d.set_name;

-- What each trained neighbour was worth: the change in its document's bits per byte from the
-- point before it (k - 1) to the point after it (k), for runs evaluated after every neighbour
-- (a neighbour without both points, under --eval-at or --neighbors-per-step, has no row).
-- Negative helps. Over a document evaluated after every neighbour the changes sum to its total
-- change, bpb(last) - bpb(0).
CREATE VIEW neighbor_gain AS
SELECT n.run_id, d.task, d.set_name, n.doc_id, n.pass, n.position, n.k, n.rank, n.neighbor_id,
       n.distance, n.jaccard13, n.tokens, d.complete,
       -(after.loglik - before.loglik) / d.bytes / ln(2) AS bpb_change
FROM neighbors n
JOIN docs d USING (run_id, doc_id)
JOIN curve after  ON after.run_id = n.run_id AND after.doc_id = n.doc_id AND after.k = n.k
JOIN curve before ON before.run_id = n.run_id AND before.doc_id = n.doc_id AND before.k = n.k - 1;
