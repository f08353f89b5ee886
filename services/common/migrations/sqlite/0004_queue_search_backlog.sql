-- Standalone message queue (`--amqp-url database://`): a send is acknowledged once its row is
-- committed; the storage consumer deletes rows after storing them.
CREATE TABLE queued_message (
    seq  INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    body BLOB    NOT NULL
);

-- Stored messages whose search indexing failed; a background task indexes them and deletes
-- the row, so an indexing failure is never silent.
CREATE TABLE search_backlog (
    message_id TEXT NOT NULL PRIMARY KEY
);
