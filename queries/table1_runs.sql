-- Which run feeds each column of table1, and the point of its curve that is read (k). The temp
-- view `table1_runs` it makes is what table1 reads, so the two never disagree.
--   base_only and ttt_nn: one TTT-NN run (nearest neighbours), the anchor: the newest given with
--     --run, else the newest finished one (else the newest run of another method). base_only is
--     its k = 0 and ttt_nn its last point, over the same documents, as the original's
--     process_results.py; ttt_nn_pct divides the two.
--   every other column: the given run of that method, else the newest finished run of it whose
--     model, store, store version and test documents equal the anchor's (and encoder, where both
--     runs recorded one).
--   dynamic_eval is read after the pass its run records as `dynamic_eval_pass` (the original's
--     script reports pass 6 of 20, process_results_dynamic_eval.py; later passes overfit).
--   a run with --passes P is read at its last point, k = neighbors x P, or at the end of pass N
--     with `tttnn sql table1 --pass N` (the variable `pass`).
CREATE OR REPLACE TEMP VIEW table1_runs AS
WITH given AS (
    SELECT unnest(coalesce(getvariable('runs'), []::BIGINT[])) AS id
),
candidates AS (
    SELECT r.id, r.method, r.selection, r.name, r.model, r.encoder, r.store, r.store_version,
           r.neighbors, r.config,
           CASE WHEN r.method = 'ttt-nn' AND r.selection = 'sift' THEN 'ttt_nn_sift'
                WHEN r.selection = 'nn' THEN replace(r.method, '-', '_') END AS col,
           d.doc_ids
    FROM runs r
    JOIN (SELECT run_id, list_sort(list(doc_id)) AS doc_ids FROM docs GROUP BY run_id) d
      ON d.run_id = r.id
    WHERE CASE WHEN getvariable('runs') IS NULL THEN r.status = 'finished'
               ELSE r.id IN (SELECT id FROM given) END
),
anchor AS (
    SELECT * FROM candidates
    WHERE col IS NOT NULL
    ORDER BY CASE col WHEN 'ttt_nn' THEN 0 WHEN 'dynamic_eval' THEN 2 ELSE 1 END, id DESC
    LIMIT 1
),
matching AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.col ORDER BY c.id DESC) AS newest
    FROM candidates c, anchor a
    WHERE c.col IN ('in_context', 'interpolate', 'dynamic_eval', 'ttt_nn', 'ttt_nn_sift')
      AND (getvariable('runs') IS NOT NULL
           OR (c.model = a.model AND c.store = a.store AND c.store_version = a.store_version
               AND (c.encoder IS NULL OR a.encoder IS NULL OR c.encoder = a.encoder)
               AND c.doc_ids = a.doc_ids))
)
SELECT 'base_only' AS column_name, id AS run_id, method, selection, name, 0::BIGINT AS k,
       len(doc_ids) AS docs, model
FROM anchor
UNION ALL
SELECT col, id, method, selection, name,
       CASE WHEN method = 'dynamic-eval' OR getvariable('pass') IS NULL THEN p.k_reported
            ELSE least(p.k_last, neighbors * getvariable('pass')) END,
       len(doc_ids), model
FROM matching JOIN run_points p ON p.run_id = matching.id WHERE newest = 1;
SELECT * FROM table1_runs
ORDER BY list_position(['base_only', 'in_context', 'interpolate', 'dynamic_eval', 'ttt_nn', 'ttt_nn_sift'], column_name);
