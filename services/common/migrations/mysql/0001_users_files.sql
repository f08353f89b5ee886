-- utf8mb4_bin: nicknames compare exactly as on SQLite (case- and accent-sensitive).
CREATE TABLE users (
    user_id       VARCHAR(32)  NOT NULL PRIMARY KEY,
    nickname      VARCHAR(64)  NOT NULL,
    password_hash VARCHAR(255) NULL,
    phone         VARCHAR(16)  NULL,
    description   TEXT         NOT NULL,
    avatar_id     VARCHAR(40)  NULL,
    created_at    BIGINT       NOT NULL,
    UNIQUE KEY users_nickname (nickname),
    UNIQUE KEY users_phone (phone)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE files (
    file_id         VARCHAR(40)  NOT NULL PRIMARY KEY,
    file_name       VARCHAR(255) NOT NULL,
    file_size       BIGINT       NOT NULL,
    owner_id        VARCHAR(32)  NOT NULL,
    chat_session_id VARCHAR(40)  NULL,
    public_read     BIGINT       NOT NULL,
    created_at      BIGINT       NOT NULL,
    KEY files_session (chat_session_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
