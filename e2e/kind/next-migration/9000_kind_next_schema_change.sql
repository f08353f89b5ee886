-- Test-only: the kind suite's `-next` image (services/chatmesh/Dockerfile, build argument
-- CARGO_FEATURES=chatmesh-common/kind-next-migration) carries this migration, so that its
-- upgrade is a real schema change and the rollback has to undo it (e2e/kind/day2.sh). Never
-- in a normal image.
ALTER TABLE message ADD COLUMN kind_next_note VARCHAR(64) NULL;
CREATE TABLE kind_next_marker (id BIGINT NOT NULL PRIMARY KEY, note VARCHAR(64) NOT NULL);
INSERT INTO kind_next_marker (id, note) VALUES (1, 'applied by the -next image');
