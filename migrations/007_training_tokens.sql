-- Tokens a document's training computed (issue #28). Never edit an applied migration: add a new file.
-- Tokens its training put through the model: every chunk with a next-token loss.
ALTER TABLE docs ADD COLUMN train_tokens BIGINT;
-- Token positions its training computed, padding included: with lanes every round is padded to
-- its longest chunk and idle lanes compute too; each document gets its share of a round. The
-- padding fraction of a run is 1 - sum(train_tokens) / sum(computed_tokens) (`tttnn sql cost`).
ALTER TABLE docs ADD COLUMN computed_tokens DOUBLE;
