-- Runs side by side, task by task: each run's bits per byte before (k = 0) and after, and
-- after/before in percent, with the settings that tell runs apart. Pick runs with --run.
SELECT t.task, r.id AS run_id, r.method, r.selection, r.name, r.neighbors AS k,
       CAST(json_extract(r.config, '$.lr') AS DOUBLE)         AS lr,
       json_extract_string(r.config, '$.optimizer_state')    AS optimizer_state, t.docs,
       round(t.bpb_before, 4)                     AS bpb_before,
       round(t.bpb_after, 4)                      AS bpb_after,
       round(100 * t.bpb_after / t.bpb_before, 1) AS after_pct
FROM task_bpb t
JOIN runs r ON r.id = t.run_id
WHERE getvariable('runs') IS NULL OR list_contains(getvariable('runs'), r.id)
ORDER BY t.task, r.id;
