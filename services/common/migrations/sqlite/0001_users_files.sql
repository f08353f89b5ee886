CREATE TABLE users (
    user_id       TEXT    NOT NULL PRIMARY KEY,
    nickname      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NULL,
    phone         TEXT    NULL UNIQUE,
    description   TEXT    NOT NULL,
    avatar_id     TEXT    NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE files (
    file_id         TEXT    NOT NULL PRIMARY KEY,
    file_name       TEXT    NOT NULL,
    file_size       INTEGER NOT NULL,
    owner_id        TEXT    NOT NULL,
    chat_session_id TEXT    NULL,
    public_read     INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX files_session ON files (chat_session_id);
