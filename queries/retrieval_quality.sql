-- How close each run's neighbours were to the exact ones, beside what training on them changed
-- (runs given --exact-reference; complete documents only): per run and task, and over all of a
-- run's documents (`task` = 'all'). `recall_at_k` is the mean share of a document's exact k
-- nearest (within the distance threshold) among its neighbours, `shared_neighbors` their mean
-- count, `rank_correlation` the mean Spearman correlation of the shared ones' places (documents
-- with two or more shared). `bpb_change` is the mean per-document change in bits per byte from
-- k = 0 to the point the run reports (negative helps); `recall_gain_corr` the correlation across
-- documents of recall and that change (NULL under three documents, or when recall is the same for
-- all, as for an exact search).
WITH d AS (
    SELECT d.run_id, d.task, d.doc_id, d.exact_neighbors, d.shared_neighbors, d.recall_at_k,
           d.rank_correlation,
           -(cn.loglik - c0.loglik) / d.bytes / ln(2) AS bpb_change
    FROM docs d
    JOIN run_points p ON p.run_id = d.run_id
    JOIN curve c0 ON c0.run_id = d.run_id AND c0.doc_id = d.doc_id AND c0.k = 0
    JOIN curve cn ON cn.run_id = d.run_id AND cn.doc_id = d.doc_id AND cn.k = p.k_reported
    WHERE d.complete AND d.exact_neighbors IS NOT NULL
      AND (getvariable('runs') IS NULL OR list_contains(getvariable('runs'), d.run_id))
)
SELECT d.run_id, r.name, coalesce(d.task, 'all') AS task,
       count(*)                                   AS docs,
       round(avg(d.recall_at_k), 4)               AS recall_at_k,
       round(avg(d.shared_neighbors), 2)          AS shared_neighbors,
       round(avg(d.exact_neighbors), 2)           AS exact_neighbors,
       round(avg(d.rank_correlation), 4)          AS rank_correlation,
       round(avg(d.bpb_change), 5)                AS bpb_change,
       CASE WHEN count(*) >= 3 AND stddev_pop(d.recall_at_k) > 0
            THEN round(corr(d.recall_at_k, d.bpb_change), 4) END
                                                  AS recall_gain_corr
FROM d JOIN runs r ON r.id = d.run_id
GROUP BY GROUPING SETS ((d.run_id, r.name, d.task), (d.run_id, r.name))
ORDER BY d.run_id, d.task IS NULL, d.task;
