CREATE TABLE friend_relation (
    user_id    TEXT    NOT NULL,
    peer_id    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);

CREATE TABLE friend_apply (
    event_id   TEXT    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    peer_id    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (user_id, peer_id)
);
CREATE INDEX friend_apply_peer ON friend_apply (peer_id);

CREATE TABLE chat_session (
    chat_session_id   TEXT    NOT NULL PRIMARY KEY,
    chat_session_name TEXT    NOT NULL,
    chat_session_type INTEGER NOT NULL,
    created_at        INTEGER NOT NULL
);

CREATE TABLE chat_session_member (
    chat_session_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    PRIMARY KEY (chat_session_id, user_id)
);
CREATE INDEX chat_session_member_user ON chat_session_member (user_id);
