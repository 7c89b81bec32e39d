-- Retrieval quality beside the gain (issue #41): a run given `--exact-reference TABLE` measures
-- each document's neighbours against the exact nearest ones of the same document. Never edit an
-- applied migration: add a new file. NULL where the run had no reference.
-- The reference's first k neighbours within the run's distance threshold.
ALTER TABLE docs ADD COLUMN exact_neighbors INTEGER;
-- Of them, among the neighbours the run used.
ALTER TABLE docs ADD COLUMN shared_neighbors INTEGER;
-- shared_neighbors / exact_neighbors (NULL without exact neighbours).
ALTER TABLE docs ADD COLUMN recall_at_k DOUBLE;
-- Spearman's rank correlation of the shared neighbours' places in both lists (NULL under two).
ALTER TABLE docs ADD COLUMN rank_correlation DOUBLE;
