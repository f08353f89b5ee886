import type { ChatSessionInfo } from "./api";
import { preview } from "./messages";
import { Avatar, time } from "./util";

/** The chats, newest activity first, with their last message and unread count. */
export function ChatList({ chats, unread, selected, onOpen }: { chats: ChatSessionInfo[]; unread: Record<string, number>; selected: string | null; onOpen(id: string): void }) {
  return (
    <ul class="chat-list">
      {chats.map((c) => (
        <li key={c.chatSessionId}>
          <button
            class={`chat-item ${c.chatSessionId === selected ? "selected" : ""}`}
            onClick={() => onOpen(c.chatSessionId)}
            aria-current={c.chatSessionId === selected ? "true" : undefined}
          >
            <Avatar name={c.chatSessionName} bytes={c.avatar} />
            <span class="chat-text">
              <span class="chat-name">{c.chatSessionName || "(unnamed)"}</span>
              <span class="chat-last">
                {c.prevMessage ? `${c.prevMessage.sender?.nickname ?? ""}: ${preview(c.prevMessage)}` : "no messages yet"}
              </span>
            </span>
            <span class="chat-meta">
              {c.prevMessage && <span class="chat-time">{time(c.prevMessage.timestamp)}</span>}
              {(unread[c.chatSessionId] ?? 0) > 0 && (
                <span class="badge" data-testid="unread" aria-label={`${unread[c.chatSessionId]} unread`}>
                  {unread[c.chatSessionId]}
                </span>
              )}
            </span>
          </button>
        </li>
      ))}
    </ul>
  );
}
