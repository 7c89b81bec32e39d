-- One settings type (issue #14): a run's settings live in `runs.config` (JSON, every setting, enum
-- values as the CLI spells them), and the view `run_settings` (one column per setting, typed from
-- the recorded values; created and kept current by the code, records/run.rs) exposes them to SQL.
-- `runs` keeps provenance and the columns queries filter on. The dropped columns repeated the
-- config JSON, which still holds every value they held. Never edit an applied migration.
ALTER TABLE runs DROP COLUMN lr;
ALTER TABLE runs DROP COLUMN device;
ALTER TABLE runs DROP COLUMN encoder_provider;   -- was always the CPU: a run never runs the encoder
ALTER TABLE runs DROP COLUMN split;
ALTER TABLE runs DROP COLUMN val_portion;
ALTER TABLE runs DROP COLUMN seed;
ALTER TABLE runs DROP COLUMN eval_at;
ALTER TABLE runs DROP COLUMN optimizer_state;
ALTER TABLE runs DROP COLUMN distance_threshold;
ALTER TABLE runs DROP COLUMN search;
ALTER TABLE runs DROP COLUMN nprobes;
ALTER TABLE runs DROP COLUMN refine_factor;
ALTER TABLE runs DROP COLUMN limit_docs;
ALTER TABLE runs DROP COLUMN precision;
ALTER TABLE runs DROP COLUMN alpha;
ALTER TABLE runs DROP COLUMN alpha_docs;
ALTER TABLE runs DROP COLUMN in_context_order;
ALTER TABLE runs DROP COLUMN sift_candidates;
ALTER TABLE runs DROP COLUMN sift_lambda;
ALTER TABLE runs DROP COLUMN sift_adaptive;
