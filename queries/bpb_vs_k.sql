-- Bits per byte against the number of neighbours trained on (k = 0: the base model), per run and
-- task over complete documents, plus pile_all weighted as in table1. Runs with --eval-at list
-- only the evaluated k. k counts every neighbour trained so far: with --passes P, pass p's points
-- are k = (p-1)·neighbors + 1 ... p·neighbors, its `pass` column (dynamic evaluation: the pass over
-- the prefix, = k). `tttnn sql bpb_vs_k --pass N` keeps k = 0 and pass N's points.
WITH b AS (
    SELECT c.run_id, d.task, d.set_name, c.k, max(c.pass) AS pass, count(*) AS docs,
           -sum(c.loglik) / sum(d.bytes) / ln(2) AS bpb
    FROM curve c
    JOIN docs d USING (run_id, doc_id)
    WHERE d.complete
      AND (getvariable('runs') IS NULL OR list_contains(getvariable('runs'), c.run_id))
      AND (getvariable('pass') IS NULL OR c.k = 0 OR c.pass = getvariable('pass'))
    GROUP BY c.run_id, d.task, d.set_name, c.k
),
w AS (
    SELECT b.*, pw.weight FROM b LEFT JOIN pile_weights pw ON pw.set_name = b.set_name
),
rows AS (
    SELECT run_id, task, k, pass, docs, bpb FROM w
    UNION ALL
    SELECT run_id, 'pile_all', k, max(pass), sum(docs), sum(bpb * weight) / sum(weight)
    FROM w WHERE weight IS NOT NULL
    GROUP BY run_id, k
)
SELECT run_id, task, k, pass, docs, round(bpb, 4) AS bits_per_byte
FROM rows
ORDER BY run_id, task = 'pile_all', task, k;
