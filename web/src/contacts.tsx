import { useState } from "preact/hooks";
import { errorText, type Api, type ChatSessionInfo, type FriendEvent, type UserInfo } from "./api";
import { Avatar } from "./util";

/** Runs an action, keeping its error (the server's words) and a success note. */
function useAction() {
  const [error, setError] = useState("");
  const [done, setDone] = useState("");
  const [busy, setBusy] = useState(false);
  async function run(what: () => Promise<unknown>, ok = "") {
    setBusy(true);
    setError("");
    setDone("");
    try {
      await what();
      setDone(ok);
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(false);
    }
  }
  const view = (
    <>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {done && (
        <p class="info" role="status">
          {done}
        </p>
      )}
    </>
  );
  return { run, busy, view };
}

interface ContactsProps {
  api: Api;
  me: UserInfo;
  friends: UserInfo[];
  pending: FriendEvent[];
  chats: ChatSessionInfo[];
  onChanged(): Promise<void>;
  onOpenChat(id: string): void;
  onBack(): void;
}

export function Contacts({ api, me, friends, pending, chats, onChanged, onOpenChat, onBack }: ContactsProps) {
  const [key, setKey] = useState("");
  const [found, setFound] = useState<UserInfo[] | null>(null);
  const a = useAction();
  const isFriend = (id: string) => friends.some((f) => f.userId === id);
  const chatWith = (id: string) => chats.find((c) => c.singleChatFriendId === id);

  return (
    <section class="panel" aria-labelledby="contacts-h">
      <header class="panel-head">
        <button class="back" onClick={onBack} aria-label="Back to chats">
          ←
        </button>
        <h2 id="contacts-h">Contacts</h2>
      </header>
      {a.view}
      <form class="search-row" role="search" onSubmit={(e) => (e.preventDefault(), a.run(async () => setFound(await api.searchUsers(key))))}>
        <label class="grow">
          Find people
          <input type="search" name="user-search" value={key} onInput={(e) => setKey(e.currentTarget.value)} />
        </label>
        <button type="submit" disabled={a.busy}>
          Search
        </button>
      </form>
      {found && (
        <section aria-label="Search results">
          {found.length === 0 && <p class="empty">Nobody found.</p>}
          <ul class="people">
            {found.map((u) => (
              <li key={u.userId}>
                <Avatar user={u} size={28} />
                <span class="grow">
                  {u.nickname} <span class="muted">{u.description}</span>
                </span>
                {u.userId === me.userId ? (
                  <span class="muted">you</span>
                ) : isFriend(u.userId) ? (
                  <span class="muted">friend</span>
                ) : (
                  <button disabled={a.busy} onClick={() => a.run(() => api.apply(u.userId), `Friend request sent to ${u.nickname}`)}>
                    Add friend
                  </button>
                )}
              </li>
            ))}
          </ul>
        </section>
      )}
      <h3>Friend requests</h3>
      {pending.length === 0 && <p class="empty">No pending requests.</p>}
      <ul class="people" aria-label="Friend requests">
        {pending.map((ev) => (
          <li key={ev.eventId}>
            <Avatar user={ev.sender as UserInfo} size={28} />
            <span class="grow">{ev.sender?.nickname}</span>
            <button
              disabled={a.busy}
              onClick={() => a.run(async () => (await api.process(ev.eventId, ev.sender?.userId ?? "", true), await onChanged()), `You and ${ev.sender?.nickname} are friends`)}
            >
              Accept
            </button>
            <button
              class="secondary"
              disabled={a.busy}
              onClick={() => a.run(async () => (await api.process(ev.eventId, ev.sender?.userId ?? "", false), await onChanged()), "Request declined")}
            >
              Reject
            </button>
          </li>
        ))}
      </ul>
      <h3>Friends</h3>
      {friends.length === 0 && <p class="empty">No friends yet.</p>}
      <ul class="people" aria-label="Friends">
        {friends.map((u) => {
          const chat = chatWith(u.userId);
          return (
            <li key={u.userId}>
              <Avatar user={u} size={28} />
              <span class="grow">
                {u.nickname} <span class="muted">{u.description}</span>
              </span>
              {chat && (
                <button class="secondary" onClick={() => onOpenChat(chat.chatSessionId)}>
                  Chat
                </button>
              )}
              <button
                class="danger"
                disabled={a.busy}
                onClick={() =>
                  confirm(`Remove ${u.nickname} from your friends?`) &&
                  a.run(async () => (await api.removeFriend(u.userId), await onChanged()), `${u.nickname} removed`)
                }
              >
                Remove
              </button>
            </li>
          );
        })}
      </ul>
    </section>
  );
}

export function NewGroup({ api, me, friends, onCreated, onBack }: { api: Api; me: UserInfo; friends: UserInfo[]; onCreated(id: string): Promise<void>; onBack(): void }) {
  const [name, setName] = useState("");
  const [picked, setPicked] = useState<Set<string>>(new Set());
  const a = useAction();
  function toggle(id: string) {
    const next = new Set(picked);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    setPicked(next);
  }
  async function create() {
    const rsp = await api.createGroup(name, [me.userId, ...picked]);
    const id = rsp.chatSessionInfo?.chatSessionId;
    if (id) await onCreated(id);
  }
  return (
    <section class="panel" aria-labelledby="group-h">
      <header class="panel-head">
        <button class="back" onClick={onBack} aria-label="Back to chats">
          ←
        </button>
        <h2 id="group-h">New group chat</h2>
      </header>
      {a.view}
      <form onSubmit={(e) => (e.preventDefault(), a.run(create))}>
        <label>
          Group name
          <input name="group-name" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <fieldset>
          <legend>Members</legend>
          {friends.length === 0 && <p class="empty">Add friends first: a group is made of your friends.</p>}
          {friends.map((u) => (
            <label class="check" key={u.userId}>
              <input type="checkbox" checked={picked.has(u.userId)} onChange={() => toggle(u.userId)} /> {u.nickname}
            </label>
          ))}
        </fieldset>
        <button type="submit" disabled={a.busy}>
          Create group
        </button>
      </form>
    </section>
  );
}
