-- Friendships are stored once per direction, so "my friends" is one indexed lookup.
CREATE TABLE friend_relation (
    user_id    VARCHAR(32) NOT NULL,
    peer_id    VARCHAR(32) NOT NULL,
    created_at BIGINT      NOT NULL,
    PRIMARY KEY (user_id, peer_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A pending application from user_id to peer_id; at most one per direction.
CREATE TABLE friend_apply (
    event_id   VARCHAR(40) NOT NULL PRIMARY KEY,
    user_id    VARCHAR(32) NOT NULL,
    peer_id    VARCHAR(32) NOT NULL,
    created_at BIGINT      NOT NULL,
    UNIQUE KEY friend_apply_pair (user_id, peer_id),
    KEY friend_apply_peer (peer_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- chat_session_type: 1 one-to-one, 2 group.
CREATE TABLE chat_session (
    chat_session_id   VARCHAR(40)  NOT NULL PRIMARY KEY,
    chat_session_name VARCHAR(255) NOT NULL,
    chat_session_type INT          NOT NULL,
    created_at        BIGINT       NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE chat_session_member (
    chat_session_id VARCHAR(40) NOT NULL,
    user_id         VARCHAR(32) NOT NULL,
    PRIMARY KEY (chat_session_id, user_id),
    KEY chat_session_member_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
