-- Table 1 of the paper: per task, bits per byte of the base model and after each method, side by
-- side, with TTT-NN's after/before in percent; pile_all weights the tasks by the Pile's effective
-- sizes (docs/spec.md §3.2), renormalised over the tasks present (`weight`: how much of the Pile's 100).
-- Columns take the newest selected run of each method (`--run ID...` selects; unset, every run).
-- Complete documents only, as the original. dynamic_eval scores each document's second half
-- (the split protocol), as the paper's Table 1 does.
WITH chosen AS (
    SELECT r.id, r.method, r.selection,
           row_number() OVER (PARTITION BY r.method, r.selection ORDER BY r.id DESC) AS newest
    FROM runs r
    WHERE getvariable('runs') IS NULL OR list_contains(getvariable('runs'), r.id)
),
t AS (
    SELECT b.task, b.set_name, b.docs, b.bpb_before, b.bpb_after, c.method, c.selection, c.id AS run_id
    FROM task_bpb b JOIN chosen c ON c.id = b.run_id AND c.newest = 1
),
per_task AS (
    SELECT task, any_value(set_name) AS set_name, max(docs) AS docs,
           coalesce(max(bpb_after) FILTER (WHERE method = 'none'),
                    max(bpb_before) FILTER (WHERE method <> 'dynamic-eval'))                AS base_only,
           max(bpb_after) FILTER (WHERE method = 'in-context')                            AS in_context,
           max(bpb_after) FILTER (WHERE method = 'interpolate')                           AS interpolate,
           max(bpb_after) FILTER (WHERE method = 'dynamic-eval')                          AS dynamic_eval,
           max(bpb_after) FILTER (WHERE method = 'ttt-nn' AND selection = 'nn')           AS ttt_nn,
           max(bpb_after) FILTER (WHERE method = 'ttt-nn' AND selection = 'sift')         AS ttt_nn_sift,
           string_agg(DISTINCT run_id::VARCHAR, ',' ORDER BY run_id::VARCHAR)            AS runs
    FROM t
    GROUP BY task
),
w AS (
    SELECT p.*, pw.weight FROM per_task p LEFT JOIN pile_weights pw ON pw.set_name = p.set_name
),
rows AS (
    SELECT task, docs, base_only, in_context, interpolate, dynamic_eval, ttt_nn, ttt_nn_sift, weight, runs
    FROM w
    UNION ALL
    SELECT 'pile_all', sum(docs),
           sum(base_only * weight)    / sum(weight) FILTER (WHERE base_only IS NOT NULL),
           sum(in_context * weight)   / sum(weight) FILTER (WHERE in_context IS NOT NULL),
           sum(interpolate * weight)  / sum(weight) FILTER (WHERE interpolate IS NOT NULL),
           sum(dynamic_eval * weight) / sum(weight) FILTER (WHERE dynamic_eval IS NOT NULL),
           sum(ttt_nn * weight)       / sum(weight) FILTER (WHERE ttt_nn IS NOT NULL),
           sum(ttt_nn_sift * weight)  / sum(weight) FILTER (WHERE ttt_nn_sift IS NOT NULL),
           sum(weight), string_agg(DISTINCT runs, ',')
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
       round(weight, 2)                     AS weight,
       runs
FROM rows
WHERE task <> 'pile_all' OR docs IS NOT NULL
ORDER BY task = 'pile_all', task;
