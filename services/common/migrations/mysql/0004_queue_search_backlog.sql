-- Standalone message queue (`--amqp-url database://`): a send is acknowledged once its row is
-- committed; the storage consumer deletes rows after storing them.
CREATE TABLE queued_message (
    seq  BIGINT     NOT NULL AUTO_INCREMENT PRIMARY KEY,
    body MEDIUMBLOB NOT NULL
) ENGINE=InnoDB;

-- Stored messages whose search indexing failed; a background task indexes them and deletes
-- the row, so an indexing failure is never silent.
CREATE TABLE search_backlog (
    message_id VARCHAR(40) NOT NULL PRIMARY KEY
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
