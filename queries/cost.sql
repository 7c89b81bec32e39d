-- What a run cost, per task: seconds per neighbour (training on it plus evaluating the document
-- after it, which is what the paper's "seconds per neighbour" counts, docs/spec.md §3.5), seconds per
-- AdamW step, retrieval and total seconds per document, and the padding fraction of training (the
-- share of the token positions computed that were padding: 0 one document at a time; with lanes,
-- rounds pad to their longest chunk). pile_all is weighted as in table1 (the padding fraction is
-- over all its tokens). `steps_per_doc` and `train_tokens_per_doc` are the training compute a
-- schedule spends per document (--passes, --neighbors-per-step): compare schedules at equal
-- compute by them.
WITH n AS (
    SELECT n.run_id, d.task, d.set_name,
           avg(n.train_s + coalesce(n.eval_s, 0)) AS s_per_neighbor
    FROM neighbors n JOIN docs d USING (run_id, doc_id)
    GROUP BY n.run_id, d.task, d.set_name
),
t AS (
    SELECT d.run_id, d.task, d.set_name, count(*) AS docs, sum(d.neighbors_used) AS neighbors,
           sum(d.train_steps) AS steps,
           sum(d.train_s) / nullif(sum(d.train_steps), 0) AS s_per_step,
           avg(d.retrieval_s) AS retrieval_s,
           avg(d.retrieval_s + d.train_s + d.eval_s) AS s_per_doc,
           sum(d.train_tokens) AS train_tokens, sum(d.computed_tokens) AS computed_tokens
    FROM docs d
    WHERE getvariable('runs') IS NULL OR list_contains(getvariable('runs'), d.run_id)
    GROUP BY d.run_id, d.task, d.set_name
),
j AS (
    SELECT t.*, n.s_per_neighbor, w.weight
    FROM t
    LEFT JOIN n USING (run_id, task, set_name)
    LEFT JOIN pile_weights w ON w.set_name = t.set_name
),
rows AS (
    SELECT run_id, task, docs, neighbors, steps, s_per_neighbor, s_per_step, retrieval_s, s_per_doc,
           train_tokens, computed_tokens FROM j
    UNION ALL
    SELECT run_id, 'pile_all', sum(docs), sum(neighbors), sum(steps),
           sum(s_per_neighbor * weight) / sum(weight), sum(s_per_step * weight) / sum(weight),
           sum(retrieval_s * weight) / sum(weight), sum(s_per_doc * weight) / sum(weight),
           sum(train_tokens), sum(computed_tokens)
    FROM j WHERE weight IS NOT NULL
    GROUP BY run_id
)
SELECT r.id AS run_id, r.method, json_extract_string(r.config, '$.device') AS device, rows.task, rows.docs, rows.neighbors, rows.steps,
       round(rows.steps / rows.docs, 2)        AS steps_per_doc,
       round(train_tokens / rows.docs, 1)      AS train_tokens_per_doc,
       round(s_per_neighbor, 3) AS s_per_neighbor,
       round(s_per_step, 4)     AS s_per_step,
       round(retrieval_s, 4)    AS retrieval_s_per_doc,
       round(s_per_doc, 2)      AS s_per_doc,
       round(1 - train_tokens / nullif(computed_tokens, 0), 4) AS padding_fraction
FROM rows JOIN runs r ON r.id = rows.run_id
ORDER BY run_id, rows.task = 'pile_all', rows.task;
