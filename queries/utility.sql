-- What neighbours were worth, summarised (the view `neighbor_gain`: each trained neighbour's change
-- in its document's bits per byte, for runs evaluated after every neighbour; negative helps): per
-- run and task, by search rank, by distance (the run's quartiles within the task) and by 13-gram
-- Jaccard similarity with the document; complete documents only. `neighbors` is how many trained
-- neighbours a band holds, `helpful_share` the share that lowered the document's bits per byte,
-- `band_low`/`band_high` the band's smallest and largest rank, distance or Jaccard.
WITH g AS (
    SELECT * FROM neighbor_gain
    WHERE complete
      AND (getvariable('runs') IS NULL OR list_contains(getvariable('runs'), run_id))
),
banded AS (
    SELECT run_id, task, 'rank' AS by_what, rank AS value, bpb_change,
           CASE WHEN rank = 1 THEN 1 WHEN rank <= 5 THEN 2 WHEN rank <= 10 THEN 3
                WHEN rank <= 20 THEN 4 WHEN rank <= 50 THEN 5 ELSE 6 END AS band
    FROM g
    UNION ALL
    SELECT run_id, task, 'distance', distance, bpb_change,
           ntile(4) OVER (PARTITION BY run_id, task ORDER BY distance)
    FROM g
    UNION ALL
    SELECT run_id, task, 'jaccard13', jaccard13, bpb_change,
           CASE WHEN jaccard13 < 0.05 THEN 1 WHEN jaccard13 < 0.2 THEN 2
                WHEN jaccard13 < 0.8 THEN 3 ELSE 4 END
    FROM g WHERE jaccard13 IS NOT NULL
)
SELECT run_id, task, by_what AS "by", band,
       round(min(value), 4)          AS band_low,
       round(max(value), 4)          AS band_high,
       count(*)                      AS neighbors,
       round(avg(bpb_change), 5)     AS mean_bpb_change,
       round(avg(CASE WHEN bpb_change < 0 THEN 1.0 ELSE 0.0 END), 3) AS helpful_share
FROM banded
GROUP BY run_id, task, by_what, band
ORDER BY run_id, task, list_position(['rank', 'distance', 'jaccard13'], by_what), band;
