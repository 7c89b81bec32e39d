-- Runs side by side, task by task: each run's bits per byte before (k = 0) and after its last
-- point, and after/before in percent, with the settings that tell the runs apart: every setting
-- of the recorded config whose value is not the same in all the runs shown (`name` aside), as
-- `key=value`. Pick runs with --run.
WITH chosen AS (
    SELECT id, config FROM runs
    WHERE getvariable('runs') IS NULL OR list_contains(getvariable('runs'), id)
),
kv AS (
    SELECT c.id, s.key, coalesce(json_extract_string(c.config, '$.' || s.key), 'null') AS value
    FROM chosen c, unnest(json_keys(c.config)) AS s(key)
    WHERE s.key <> 'name'
),
differing AS (
    SELECT key FROM kv GROUP BY key
    HAVING count(DISTINCT value) > 1 OR count(*) < (SELECT count(*) FROM chosen)
),
settings AS (
    SELECT id, string_agg(key || '=' || value, ' ' ORDER BY key) AS settings
    FROM kv WHERE key IN (SELECT key FROM differing)
    GROUP BY id
)
SELECT t.task, r.id AS run_id, r.method, r.selection, r.name, r.neighbors AS k,
       coalesce(s.settings, '') AS settings, t.docs,
       round(t.bpb_before, 4)                     AS bpb_before,
       round(t.bpb_after, 4)                      AS bpb_after,
       round(100 * t.bpb_after / t.bpb_before, 1) AS after_pct
FROM task_bpb t
JOIN runs r ON r.id = t.run_id
LEFT JOIN settings s ON s.id = r.id
WHERE getvariable('runs') IS NULL OR list_contains(getvariable('runs'), r.id)
ORDER BY t.task, r.id;
