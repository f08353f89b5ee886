CREATE TABLE message (
    message_id      TEXT    NOT NULL PRIMARY KEY,
    chat_session_id TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    message_type    INTEGER NOT NULL,
    content         TEXT    NULL,
    file_id         TEXT    NULL,
    file_name       TEXT    NULL,
    file_size       INTEGER NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX message_session_time ON message (chat_session_id, created_at);
