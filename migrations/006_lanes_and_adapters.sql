-- Lanes and adapters (issue #18). Never edit an applied migration: add a new file.
-- How many test documents a run trained at once (`--lanes`).
ALTER TABLE runs ADD COLUMN lanes INTEGER DEFAULT 1;
-- What test-time training trained: `full` (every weight, the paper) or `lora r=… alpha=… targets`
-- (per-document adapters on a frozen base, a departure).
ALTER TABLE runs ADD COLUMN adapter VARCHAR DEFAULT 'full';
