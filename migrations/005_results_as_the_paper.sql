-- Results as the paper computes them and the leakage audit (issue #15). Never edit an applied
-- migration: add a new file.
-- 13-gram Jaccard similarity of each neighbour's text with the test document's (MassiveDS's
-- decontamination measure; NULL where the neighbour is the document itself, dynamic evaluation).
ALTER TABLE neighbors ADD COLUMN jaccard13 DOUBLE;
-- The largest over the document's neighbours: ≥ 0.8 is a near copy (`tttnn sql leakage`).
ALTER TABLE docs ADD COLUMN max_jaccard13 DOUBLE;
