-- One row per message; file bytes live in the file service, only their ids here.
-- message_type: 0 text, 1 image, 2 file, 3 speech (the seed's MessageType).
CREATE TABLE message (
    message_id      VARCHAR(40)  NOT NULL PRIMARY KEY,
    chat_session_id VARCHAR(40)  NOT NULL,
    user_id         VARCHAR(32)  NOT NULL,
    message_type    INT          NOT NULL,
    content         MEDIUMTEXT   NULL,
    file_id         VARCHAR(40)  NULL,
    file_name       VARCHAR(255) NULL,
    file_size       BIGINT       NULL,
    created_at      BIGINT       NOT NULL,
    KEY message_session_time (chat_session_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
