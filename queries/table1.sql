-- Table 1 of the paper: per task, bits per byte of the base model and after each method, side by
-- side, with TTT-NN's after/before in percent; pile_all weights the tasks by the Pile's effective
-- sizes (docs/spec.md §3.2), renormalised over the tasks present (`weight`: how much of the Pile's
-- 100). Each column comes from one run, as `table1_runs` (run first, above) chose it; each run's
-- complete documents, as the original; dynamic_eval scores each document's second half (the split
-- protocol), as the paper's Table 1 does. With the variable `exclude_near_copies` set (`tttnn sql
-- table1 --exclude-near-copies`), documents with a neighbour of 13-gram Jaccard ≥ 0.8 are left out.
-- The temp view `table1_docs` holds each column's documents (base_only is its run's k = 0): the
-- bootstrap intervals of `tttnn sql table1 --ci` resample them.
CREATE OR REPLACE TEMP VIEW table1_docs AS
WITH near_copies AS (
    SELECT DISTINCT n.doc_id
    FROM neighbors n JOIN table1_runs t ON t.run_id = n.run_id
    WHERE n.jaccard13 >= 0.8
)
SELECT t.column_name, d.run_id, d.task, d.set_name, d.doc_id, d.bytes,
       -c.loglik / ln(2) AS bits
FROM table1_runs t
JOIN docs d  ON d.run_id = t.run_id
JOIN curve c ON c.run_id = d.run_id AND c.doc_id = d.doc_id AND c.k = t.k
WHERE d.complete
  AND NOT (coalesce(getvariable('exclude_near_copies'), false)
           AND d.doc_id IN (SELECT doc_id FROM near_copies));
WITH per_column AS (
    SELECT column_name, task, any_value(set_name) AS set_name, count(*) AS docs,
           sum(bits) / sum(bytes) AS bpb
    FROM table1_docs
    GROUP BY column_name, task
),
per_task AS (
    SELECT task, any_value(set_name) AS set_name,
           max(docs) FILTER (WHERE column_name = 'base_only')    AS docs,
           max(bpb) FILTER (WHERE column_name = 'base_only')    AS base_only,
           max(bpb) FILTER (WHERE column_name = 'in_context')   AS in_context,
           max(bpb) FILTER (WHERE column_name = 'interpolate')  AS interpolate,
           max(bpb) FILTER (WHERE column_name = 'dynamic_eval') AS dynamic_eval,
           max(bpb) FILTER (WHERE column_name = 'ttt_nn')       AS ttt_nn,
           max(bpb) FILTER (WHERE column_name = 'ttt_nn_sift')  AS ttt_nn_sift
    FROM per_column
    GROUP BY task
),
w AS (
    SELECT p.*, pw.weight FROM per_task p LEFT JOIN pile_weights pw ON pw.set_name = p.set_name
),
rows AS (
    SELECT task, docs, base_only, in_context, interpolate, dynamic_eval, ttt_nn, ttt_nn_sift, weight
    FROM w
    UNION ALL
    SELECT 'pile_all', sum(docs),
           sum(base_only * weight)    / sum(weight) FILTER (WHERE base_only IS NOT NULL),
           sum(in_context * weight)   / sum(weight) FILTER (WHERE in_context IS NOT NULL),
           sum(interpolate * weight)  / sum(weight) FILTER (WHERE interpolate IS NOT NULL),
           sum(dynamic_eval * weight) / sum(weight) FILTER (WHERE dynamic_eval IS NOT NULL),
           sum(ttt_nn * weight)       / sum(weight) FILTER (WHERE ttt_nn IS NOT NULL),
           sum(ttt_nn_sift * weight)  / sum(weight) FILTER (WHERE ttt_nn_sift IS NOT NULL),
           sum(weight)
    FROM w WHERE weight IS NOT NULL
)
SELECT task, docs,
       round(base_only, 4)                  AS base_only,
       round(in_context, 4)                 AS in_context,
       round(interpolate, 4)                AS interpolate,
       round(dynamic_eval, 4)               AS dynamic_eval,
       round(ttt_nn, 4)                     AS ttt_nn,
       round(100 * ttt_nn / base_only, 1)   AS ttt_nn_pct,
       round(ttt_nn_sift, 4)                AS ttt_nn_sift,
       round(weight, 2)                     AS weight
FROM rows
WHERE task <> 'pile_all' OR docs IS NOT NULL
ORDER BY task = 'pile_all', task;
