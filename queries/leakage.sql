-- The leakage audit: test documents with a near copy among their neighbours, i.e. a neighbour
-- whose 13-gram Jaccard similarity with the document (MassiveDS's decontamination measure) is at
-- least 0.8, nearest such neighbour first; per run (`--run` selects). The paper found about 4% of
-- Pile test documents to have a near-duplicate in the training set.
SELECT n.run_id, d.task, n.doc_id, n.rank, n.neighbor_id, round(n.distance, 4) AS distance,
       round(n.jaccard13, 4) AS jaccard13
FROM neighbors n JOIN docs d USING (run_id, doc_id)
WHERE n.jaccard13 >= 0.8
  AND (getvariable('runs') IS NULL OR list_contains(getvariable('runs'), n.run_id))
QUALIFY row_number() OVER (PARTITION BY n.run_id, n.doc_id ORDER BY n.rank) = 1
ORDER BY n.run_id, d.task, n.doc_id;
