-- Profiles carry a small re-encoded copy of the avatar; the original stays in avatar_id.
ALTER TABLE users ADD COLUMN avatar_thumb_id VARCHAR(40) NULL;
CREATE INDEX files_owner ON files (owner_id);
