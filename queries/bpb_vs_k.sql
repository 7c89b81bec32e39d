-- Bits per byte against the number of neighbours trained on (k = 0: the base model), per run and
-- task over complete documents, plus pile_all weighted as in table1. Runs with --eval-at list
-- only the evaluated k.
WITH b AS (
    SELECT c.run_id, d.task, d.set_name, c.k, count(*) AS docs,
           -sum(c.loglik) / sum(d.bytes) / ln(2) AS bpb
    FROM curve c
    JOIN docs d USING (run_id, doc_id)
    WHERE d.complete
      AND (getvariable('runs') IS NULL OR list_contains(getvariable('runs'), c.run_id))
    GROUP BY c.run_id, d.task, d.set_name, c.k
),
w AS (
    SELECT b.*, pw.weight FROM b LEFT JOIN pile_weights pw ON pw.set_name = b.set_name
),
rows AS (
    SELECT run_id, task, k, docs, bpb FROM w
    UNION ALL
    SELECT run_id, 'pile_all', k, sum(docs), sum(bpb * weight) / sum(weight)
    FROM w WHERE weight IS NOT NULL
    GROUP BY run_id, k
)
SELECT run_id, task, k, docs, round(bpb, 4) AS bits_per_byte
FROM rows
ORDER BY run_id, task = 'pile_all', task, k;
