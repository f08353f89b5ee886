// The app: login, then one store of chats, messages, friends and unread counts that every
// screen reads, fed by the API and by the notification WebSocket.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import {
  Api,
  errorText,
  NotifyType,
  num,
  pb,
  ServerError,
  type ChatSessionInfo,
  type FriendEvent,
  type MessageInfo,
  type UserInfo,
} from "./api";
import { Login } from "./login";
import { Notifier, type LinkState } from "./notify";
import { ChatView } from "./chat";
import { Contacts, NewGroup } from "./contacts";
import { Profile } from "./profile";
import { ChatList } from "./chatlist";
import { sig, sortMessages } from "./messages";
import { Avatar } from "./util";

const SESSION_KEY = "chatmesh.session";

export function App() {
  const [session, setSession] = useState(() => localStorage.getItem(SESSION_KEY) ?? "");
  const [notice, setNotice] = useState<string>();
  if (!session)
    return (
      <Login
        notice={notice}
        onSession={(s) => {
          localStorage.setItem(SESSION_KEY, s);
          setNotice(undefined);
          setSession(s);
        }}
      />
    );
  return (
    <Main
      key={session}
      session={session}
      onLogout={(reason) => {
        localStorage.removeItem(SESSION_KEY);
        setNotice(reason);
        setSession("");
      }}
    />
  );
}

/** A message being sent from this tab: shown at once, replaced by the stored one. */
export interface Local {
  state: "sending" | "sent" | "failed";
  error?: string;
}

export type Panel = "chats" | "contacts" | "profile" | "group";

const PAGE = 30;

function Main({ session, onLogout }: { session: string; onLogout(reason?: string): void }) {
  const api = useMemo(() => new Api(session), [session]);
  const [me, setMe] = useState<UserInfo | null>(null);
  const [chats, setChats] = useState<ChatSessionInfo[]>([]);
  const [msgs, setMsgs] = useState<Record<string, MessageInfo[]>>({});
  const [locals, setLocals] = useState<Record<string, Local>>({});
  const [more, setMore] = useState<Record<string, boolean>>({});
  const [unread, setUnread] = useState<Record<string, number>>({});
  const [open, setOpen] = useState<string | null>(null);
  const [panel, setPanel] = useState<Panel>("chats");
  const [friends, setFriends] = useState<UserInfo[]>([]);
  const [pending, setPending] = useState<FriendEvent[]>([]);
  const [link, setLink] = useState<LinkState>("connecting");
  const [notices, setNotices] = useState<{ id: number; text: string }[]>([]);
  const [error, setError] = useState("");
  const notifier = useRef<Notifier>();
  /** Chats whose newest page has been fetched (pushes alone do not count). */
  const loaded = useRef(new Set<string>());
  // Notices (the last three) fade after a while; errors stay until the next action.
  const noticeId = useRef(0);
  function setNotice(text: string) {
    const id = ++noticeId.current;
    setNotices((ns) => [...ns.slice(-2), { id, text }]);
    setTimeout(() => dismiss(id), 8000);
  }
  const dismiss = (id: number) => setNotices((ns) => ns.filter((n) => n.id !== id));
  // Handlers registered once read the latest state through this ref.
  const st = useRef({ me, chats, msgs, locals, open, panel });
  st.current = { me, chats, msgs, locals, open, panel };

  const readKey = () => `chatmesh.read.${st.current.me?.userId ?? ""}`;
  const readMarks = (): Record<string, number> => JSON.parse(localStorage.getItem(readKey()) || "{}");
  function markRead(chat: string, ts: number) {
    const marks = readMarks();
    if ((marks[chat] ?? 0) < ts) {
      marks[chat] = ts;
      localStorage.setItem(readKey(), JSON.stringify(marks));
    }
    setUnread((u) => ({ ...u, [chat]: 0 }));
  }

  /** Adds server messages; drops the local copies they confirm. */
  function merge(chat: string, incoming: MessageInfo[]) {
    setMsgs((all) => {
      const have = all[chat] ?? [];
      const ids = new Set(have.map((m) => m.messageId));
      const fresh = incoming.filter((m) => !ids.has(m.messageId));
      if (fresh.length === 0) return all;
      let list = [...have, ...fresh];
      const myId = st.current.me?.userId;
      for (const m of fresh) {
        if (m.sender?.userId !== myId) continue;
        const idx = list.findIndex((l) => st.current.locals[l.messageId]?.state === "sent" && sig(l) === sig(m));
        if (idx >= 0) list.splice(idx, 1);
      }
      list = sortMessages(list);
      return { ...all, [chat]: list };
    });
  }

  function touchChat(m: MessageInfo) {
    setChats((cs) => {
      const i = cs.findIndex((c) => c.chatSessionId === m.chatSessionId);
      if (i < 0) return cs;
      const prev = cs[i].prevMessage;
      if (prev && num(prev.timestamp) > num(m.timestamp)) return cs;
      const c = pb.ChatSessionInfo.create({ ...plainChat(cs[i]), prevMessage: m });
      return [c, ...cs.slice(0, i), ...cs.slice(i + 1)];
    });
  }

  async function countUnread(list: ChatSessionInfo[]) {
    const marks = readMarks();
    const myId = st.current.me?.userId;
    for (const c of list) {
      const p = c.prevMessage;
      const seen = marks[c.chatSessionId] ?? 0;
      if (!p || p.sender?.userId === myId || num(p.timestamp) <= seen || c.chatSessionId === st.current.open) continue;
      try {
        const recent = await api.recent(c.chatSessionId, 50);
        const n = recent.filter((m) => m.sender?.userId !== myId && num(m.timestamp) > seen).length;
        setUnread((u) => ({ ...u, [c.chatSessionId]: n }));
      } catch {
        /* a count is a hint; the chat itself shows any error */
      }
    }
  }

  async function loadChats() {
    const list = await api.chats();
    list.sort((a, b) => num(b.prevMessage?.timestamp) - num(a.prevMessage?.timestamp));
    setChats(list);
    return list;
  }
  const loadFriends = async () => setFriends(await api.friends());
  const loadPending = async () => setPending(await api.pending());

  async function guard(what: () => Promise<unknown>) {
    try {
      setError("");
      await what();
    } catch (e) {
      setError(errorText(e));
    }
  }

  // Start: who am I (an invalid session ends here with the server's words), then the rest.
  useEffect(() => {
    let live = true;
    (async () => {
      try {
        const user = await api.me();
        if (!live) return;
        st.current.me = user;
        setMe(user);
      } catch (e) {
        if (e instanceof ServerError) onLogout(e.message);
        else setError(errorText(e));
        return;
      }
      await guard(async () => {
        const list = await loadChats();
        await Promise.all([loadFriends(), loadPending()]);
        void countUnread(list);
      });
      notifier.current = new Notifier(session, {
        onNotify,
        onState: setLink,
        onReconnect: () => void catchUp(),
        onRefused: (reason) => onLogout(reason),
      });
    })();
    const channel = new BroadcastChannel("chatmesh");
    // Another tab of this login sent a message: the server does not push it to this login.
    channel.onmessage = (ev) => ev.data?.session === session && void reconcile(ev.data.chat, false);
    bc.current = channel;
    return () => {
      live = false;
      notifier.current?.stop();
      channel.close();
    };
  }, [api]);
  const bc = useRef<BroadcastChannel>();

  /** After a reconnect: what happened while the socket was down. */
  async function catchUp() {
    await guard(async () => {
      const list = await loadChats();
      await Promise.all([loadFriends(), loadPending()]);
      const now = Math.floor(Date.now() / 1000) + 3600;
      for (const [chat, have] of Object.entries(st.current.msgs)) {
        const last = have.filter((m) => !st.current.locals[m.messageId]).at(-1);
        merge(chat, await api.history(chat, last ? num(last.timestamp) : 0, now));
      }
      void countUnread(list);
    });
  }

  function onNotify(n: pb.NotifyMessage) {
    switch (n.notifyType) {
      case NotifyType.CHAT_MESSAGE_NOTIFY: {
        const m = n.newMessageInfo?.messageInfo as MessageInfo | undefined;
        if (!m) return;
        const chat = m.chatSessionId;
        if (!st.current.chats.some((c) => c.chatSessionId === chat)) void loadChats();
        merge(chat, [m]);
        touchChat(m);
        if (chat === st.current.open && st.current.panel === "chats" && !document.hidden) markRead(chat, num(m.timestamp));
        else setUnread((u) => ({ ...u, [chat]: (u[chat] ?? 0) + 1 }));
        break;
      }
      case NotifyType.FRIEND_ADD_APPLY_NOTIFY:
        setNotice(`${n.friendAddApply?.userInfo?.nickname ?? "Someone"} sent you a friend request`);
        void loadPending();
        break;
      case NotifyType.FRIEND_ADD_PROCESS_NOTIFY: {
        const who = n.friendProcessResult?.userInfo?.nickname ?? "Someone";
        setNotice(n.friendProcessResult?.agree ? `${who} accepted your friend request` : `${who} declined your friend request`);
        void loadFriends();
        break;
      }
      case NotifyType.CHAT_SESSION_CREATE_NOTIFY: {
        const c = n.newChatSessionInfo?.chatSessionInfo as ChatSessionInfo | undefined;
        if (!c) return;
        setChats((cs) => (cs.some((x) => x.chatSessionId === c.chatSessionId) ? cs : [c, ...cs]));
        setNotice(`New chat: ${c.chatSessionName}`);
        break;
      }
      case NotifyType.FRIEND_REMOVE_NOTIFY:
        void loadFriends();
        void loadChats();
        break;
    }
  }

  async function openChat(chat: string) {
    setOpen(chat);
    setPanel("chats");
    await guard(async () => {
      let newest = st.current.msgs[chat]?.at(-1);
      markRead(chat, newest ? num(newest.timestamp) : 0);
      // Merged, not replaced: a push may have arrived while the page was on its way.
      if (!loaded.current.has(chat)) {
        const list = await api.recent(chat, PAGE);
        loaded.current.add(chat);
        setMore((m) => ({ ...m, [chat]: list.length === PAGE }));
        merge(chat, list);
        const last = list.at(-1);
        if (last && (!newest || num(last.timestamp) > num(newest.timestamp))) newest = last;
      }
      markRead(chat, newest ? num(newest.timestamp) : 0);
    });
  }

  /** Scroll-back: the page before the oldest message held. Timestamps are seconds, so the
   * oldest one's whole second comes first (nothing in it is skipped), then the page before it. */
  async function loadEarlier(chat: string) {
    const have = (st.current.msgs[chat] ?? []).filter((m) => !st.current.locals[m.messageId]);
    const oldest = have[0];
    if (!oldest) return;
    const t = num(oldest.timestamp);
    merge(chat, await api.history(chat, t, t));
    const page = await api.recent(chat, PAGE, t - 1);
    setMore((m) => ({ ...m, [chat]: page.length === PAGE }));
    merge(chat, page);
  }

  /** Fetches the newest messages: in the sending tab until the store has confirmed its local
   * copies; in a sibling tab a few times (it cannot tell when the store has the message). */
  async function reconcile(chat: string, mine: boolean) {
    for (const wait of mine ? [200, 600, 1500, 3000, 6000] : [300, 1000, 3000]) {
      await new Promise((r) => setTimeout(r, wait));
      try {
        const list = await api.recent(chat, 20);
        merge(chat, list);
        const last = list.at(-1);
        if (last) touchChat(last);
      } catch {
        /* try again */
      }
      await new Promise((r) => setTimeout(r, 0));
      const left = (st.current.msgs[chat] ?? []).some((m) => st.current.locals[m.messageId]?.state === "sent");
      if (mine && !left) return;
    }
  }

  async function send(chat: string, content: pb.MessageContent.$Properties) {
    const me = st.current.me;
    const local = pb.MessageInfo.create({
      messageId: `local-${crypto.randomUUID()}`,
      chatSessionId: chat,
      timestamp: Math.floor(Date.now() / 1000),
      sender: me ?? undefined,
      message: pb.MessageContent.create(content),
    });
    const id = local.messageId;
    setLocals((l) => ({ ...l, [id]: { state: "sending" } }));
    setMsgs((all) => ({ ...all, [chat]: [...(all[chat] ?? []), local] }));
    try {
      await api.send(chat, content);
      st.current.locals = { ...st.current.locals, [id]: { state: "sent" } };
      setLocals((l) => ({ ...l, [id]: { state: "sent" } }));
      bc.current?.postMessage({ session, chat });
      touchChat(local);
      void reconcile(chat, true);
    } catch (e) {
      setLocals((l) => ({ ...l, [id]: { state: "failed", error: errorText(e) } }));
      throw e;
    }
  }

  const totalUnread = Object.values(unread).reduce((a, b) => a + b, 0);
  useEffect(() => {
    document.title = totalUnread > 0 ? `(${totalUnread}) chatmesh` : "chatmesh";
  }, [totalUnread]);

  const current = chats.find((c) => c.chatSessionId === open) ?? null;
  const showMain = panel !== "chats" || !!current;
  const nav = (p: Panel) => {
    setPanel(p);
    if (p === "chats") setOpen(null);
  };

  return (
    <div class={`app ${showMain ? "show-main" : ""}`}>
      <header class="top">
        <strong class="brand">chatmesh</strong>
        <span class={`link ${link}`} role="status" data-testid="link">
          {link === "online" ? "connected" : link === "connecting" ? "connecting…" : "offline, reconnecting…"}
        </span>
        <nav aria-label="Main">
          <button class={panel === "chats" ? "current" : ""} onClick={() => nav("chats")}>
            Chats
          </button>
          <button class={panel === "contacts" ? "current" : ""} onClick={() => nav("contacts")}>
            Contacts{pending.length > 0 && <span class="badge" aria-label={`${pending.length} pending`}>{pending.length}</span>}
          </button>
          <button class={panel === "group" ? "current" : ""} onClick={() => nav("group")}>
            New group
          </button>
          <button class={panel === "profile" ? "current" : ""} onClick={() => nav("profile")} aria-label="Profile">
            <Avatar user={me} size={22} /> <span class="me-name">{me?.nickname}</span>
          </button>
          <button class="secondary" onClick={() => onLogout()}>
            Log out
          </button>
        </nav>
      </header>
      {(notices.length > 0 || error) && (
        <div class="banner">
          {error && (
            <p class="error" role="alert">
              {error}
            </p>
          )}
          {notices.map((n) => (
            <p class="info" role="status" key={n.id}>
              {n.text}{" "}
              <button class="link-button" onClick={() => dismiss(n.id)} aria-label="Dismiss">
                ×
              </button>
            </p>
          ))}
        </div>
      )}
      <aside class="sidebar" aria-label="Chats">
        <h2 class="sr-only">Chats</h2>
        {chats.length === 0 && <p class="empty">No chats yet: add a friend in Contacts, or create a group.</p>}
        <ChatList chats={chats} unread={unread} selected={panel === "chats" ? open : null} onOpen={(id) => void openChat(id)} />
      </aside>
      <main class="main">
        {panel === "chats" && current && me && (
          <ChatView
            key={current.chatSessionId}
            api={api}
            me={me}
            chat={current}
            messages={msgs[current.chatSessionId] ?? []}
            locals={locals}
            more={more[current.chatSessionId] ?? false}
            onLoadEarlier={() => loadEarlier(current.chatSessionId)}
            onSend={(content) => send(current.chatSessionId, content)}
            onBack={() => setOpen(null)}
          />
        )}
        {panel === "chats" && !current && <p class="empty pane-empty">Choose a chat.</p>}
        {panel === "contacts" && me && (
          <Contacts
            api={api}
            me={me}
            friends={friends}
            pending={pending}
            chats={chats}
            onChanged={() => guard(async () => void (await Promise.all([loadFriends(), loadPending(), loadChats()])))}
            onOpenChat={(id) => void openChat(id)}
            onBack={() => nav("chats")}
          />
        )}
        {panel === "group" && me && (
          <NewGroup
            api={api}
            me={me}
            friends={friends}
            onCreated={async (id) => {
              await loadChats();
              await openChat(id);
            }}
            onBack={() => nav("chats")}
          />
        )}
        {panel === "profile" && me && <Profile api={api} me={me} onChanged={(u) => setMe(u)} onBack={() => nav("chats")} />}
      </main>
    </div>
  );
}

function plainChat(c: ChatSessionInfo): pb.ChatSessionInfo.$Properties {
  return {
    singleChatFriendId: c.singleChatFriendId,
    chatSessionId: c.chatSessionId,
    chatSessionName: c.chatSessionName,
    prevMessage: c.prevMessage,
    avatar: c.avatar,
  };
}
