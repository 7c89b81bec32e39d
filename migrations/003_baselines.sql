-- Baselines and SIFT (issue #6): their settings on runs, what each document got. Never edit an
-- applied migration: add a new file.
ALTER TABLE runs ADD COLUMN alpha DOUBLE;                  -- interpolate: fixed α (NULL: chosen per task)
ALTER TABLE runs ADD COLUMN alpha_docs INTEGER;            -- held-out documents per task α is chosen on
ALTER TABLE runs ADD COLUMN in_context_order VARCHAR;      -- nearest-last | original (the original's tail bug)
ALTER TABLE runs ADD COLUMN sift_candidates INTEGER;
ALTER TABLE runs ADD COLUMN sift_lambda DOUBLE;
ALTER TABLE runs ADD COLUMN sift_adaptive DOUBLE;          -- adaptive SIFT's α (NULL: fixed budget)

ALTER TABLE docs ADD COLUMN alpha DOUBLE;                  -- interpolate: the α this document was scored with
ALTER TABLE docs ADD COLUMN alpha_source VARCHAR;          -- fixed | held-out | default
ALTER TABLE docs ADD COLUMN context_tokens BIGINT;         -- in-context: neighbour tokens in the window
ALTER TABLE docs ADD COLUMN context_fallback BOOLEAN;      -- in-context: longer than the window, scored alone
