// Pure helpers over wire messages.
import { MessageType, num, type MessageInfo, type pb } from "./api";

/** What a message says, to match a local copy with the stored one. */
export function sig(m: MessageInfo): string {
  const c = m.message;
  return `${c?.messageType ?? 0}:${c?.stringMessage?.content ?? c?.fileMessage?.fileName ?? ""}`;
}

/** Oldest first; ids (time-ordered) break ties within a second. */
export function sortMessages(list: MessageInfo[]): MessageInfo[] {
  return list.sort((a, b) => num(a.timestamp) - num(b.timestamp) || (a.messageId < b.messageId ? -1 : 1));
}

/** One line for the chat list. */
export function preview(m?: pb.MessageInfo.$Properties | null): string {
  const c = m?.message;
  if (!c) return "";
  switch (c.messageType) {
    case MessageType.STRING:
      return c.stringMessage?.content ?? "";
    case MessageType.IMAGE:
      return "[image]";
    case MessageType.FILE:
      return `[file] ${c.fileMessage?.fileName ?? ""}`;
    case MessageType.SPEECH:
      return "[voice]";
  }
  return "";
}
