import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { errorText, MessageType, num, type Api, type ChatSessionInfo, type MessageInfo, type pb, type UserInfo } from "./api";
import type { Local } from "./app";
import { Recorder } from "./audio";
import { Avatar, bytesText, download, imageType, readFile, time, useObjectUrl } from "./util";

interface Props {
  api: Api;
  me: UserInfo;
  chat: ChatSessionInfo;
  messages: MessageInfo[];
  locals: Record<string, Local>;
  more: boolean;
  onLoadEarlier(): Promise<void>;
  onSend(content: pb.MessageContent.$Properties): Promise<void>;
  onBack(): void;
}

export function ChatView({ api, me, chat, messages, locals, more, onLoadEarlier, onSend, onBack }: Props) {
  const list = useRef<HTMLOListElement>(null);
  const keep = useRef<{ height: number; top: number } | null>(null);
  const atBottom = useRef(true);
  const [error, setError] = useState("");
  const [loading, setLoading] = useState(false);
  const [members, setMembers] = useState<UserInfo[] | null>(null);
  const [results, setResults] = useState<MessageInfo[] | null>(null);
  const [query, setQuery] = useState("");

  // New messages at the bottom scroll into view when the reader is already near it; earlier
  // pages keep the reader's place.
  const last = messages.at(-1)?.messageId;
  useLayoutEffect(() => {
    const el = list.current;
    if (!el) return;
    if (keep.current) {
      el.scrollTop = el.scrollHeight - keep.current.height + keep.current.top;
      keep.current = null;
    } else if (atBottom.current || messages.at(-1)?.sender?.userId === me.userId) {
      el.scrollTop = el.scrollHeight;
    }
  }, [last, messages.length]);

  async function earlier() {
    const el = list.current;
    if (loading || !more || !el) return;
    setLoading(true);
    keep.current = { height: el.scrollHeight, top: el.scrollTop };
    try {
      await onLoadEarlier();
    } catch (e) {
      setError(errorText(e));
    } finally {
      setLoading(false);
    }
  }

  async function act(what: () => Promise<unknown>) {
    setError("");
    try {
      await what();
    } catch (e) {
      setError(errorText(e));
    }
  }

  return (
    <section class="chat" aria-label={`Chat ${chat.chatSessionName}`}>
      <header class="chat-head">
        <button class="back" onClick={onBack} aria-label="Back to chats">
          ←
        </button>
        <Avatar name={chat.chatSessionName} bytes={chat.avatar} />
        <h2>{chat.chatSessionName}</h2>
        <button class="secondary" onClick={() => act(async () => setMembers(members ? null : await api.members(chat.chatSessionId)))}>
          Members
        </button>
      </header>
      <form
        class="search-row"
        role="search"
        onSubmit={(e) => (e.preventDefault(), act(async () => setResults(await api.searchMessages(chat.chatSessionId, query))))}
      >
        <label class="grow">
          <span class="sr-only">Search messages</span>
          <input type="search" placeholder="Search messages" value={query} onInput={(e) => setQuery(e.currentTarget.value)} />
        </label>
        <button type="submit" class="secondary">
          Search
        </button>
      </form>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {members && (
        <section class="drawer" aria-label="Members">
          <h3>Members ({members.length})</h3>
          <ul class="people">
            {members.map((u) => (
              <li key={u.userId}>
                <Avatar user={u} size={28} /> {u.nickname}
                {u.userId === me.userId && " (you)"}
              </li>
            ))}
          </ul>
        </section>
      )}
      {results && (
        <section class="drawer" aria-label="Search results">
          <h3>
            {results.length} result{results.length === 1 ? "" : "s"} for “{query}”{" "}
            <button class="link-button" onClick={() => setResults(null)}>
              Close
            </button>
          </h3>
          <ol class="results">
            {results.map((m) => (
              <li key={m.messageId}>
                <strong>{m.sender?.nickname}</strong> <time>{time(m.timestamp)}</time>: {m.message?.stringMessage?.content}
              </li>
            ))}
          </ol>
        </section>
      )}
      <ol class="messages" ref={list} role="log" aria-live="polite" aria-label="Messages" onScroll={(e) => {
          const el = e.currentTarget;
          atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 60;
          if (el.scrollTop < 40) void earlier();
        }}
      >
        {more && (
          <li class="earlier">
            <button class="secondary" onClick={() => void earlier()} disabled={loading}>
              {loading ? "Loading…" : "Load earlier messages"}
            </button>
          </li>
        )}
        {messages.map((m) => (
          <MessageItem key={m.messageId} api={api} m={m} mine={m.sender?.userId === me.userId} local={locals[m.messageId]} />
        ))}
      </ol>
      <Composer onSend={onSend} />
    </section>
  );
}

function MessageItem({ api, m, mine, local }: { api: Api; m: MessageInfo; mine: boolean; local?: Local }) {
  const c = m.message;
  return (
    <li class={`msg ${mine ? "mine" : ""}`} data-testid="message">
      <div class="msg-head">
        <span class="sender">{m.sender?.nickname}</span> <time>{time(m.timestamp)}</time>
        {local?.state === "sending" && <span class="state"> sending…</span>}
        {local?.state === "failed" && (
          <span class="state error" role="alert">
            {" "}
            not sent: {local.error}
          </span>
        )}
      </div>
      <div class="bubble">
        {c?.messageType === MessageType.STRING && <p class="text">{c.stringMessage?.content}</p>}
        {c?.messageType === MessageType.IMAGE && <ImageBody api={api} m={m} />}
        {c?.messageType === MessageType.FILE && <FileBody api={api} m={m} />}
        {c?.messageType === MessageType.SPEECH && <SpeechBody api={api} m={m} />}
      </div>
    </li>
  );
}

/** Attachment bytes: carried in the message, or fetched from the file service by id. */
function useAttachment(api: Api, inline: Uint8Array | null | undefined, fileId: string | null | undefined) {
  const [bytes, setBytes] = useState<Uint8Array | null>(inline && inline.length ? inline : null);
  const [error, setError] = useState("");
  useEffect(() => {
    if (bytes || !fileId || fileId.startsWith("local-")) return;
    api.file(fileId).then(setBytes, (e) => setError(errorText(e)));
  }, [fileId]);
  return { bytes, error };
}

function ImageBody({ api, m }: { api: Api; m: MessageInfo }) {
  const img = m.message?.imageMessage;
  const { bytes, error } = useAttachment(api, img?.imageContent, img?.fileId);
  const url = useObjectUrl(bytes, bytes ? imageType(bytes) : "");
  if (error) return <p class="error">{error}</p>;
  return url ? <img class="image" src={url} alt={`image from ${m.sender?.nickname ?? "someone"}`} /> : <p>loading image…</p>;
}

function FileBody({ api, m }: { api: Api; m: MessageInfo }) {
  const f = m.message?.fileMessage;
  const [error, setError] = useState("");
  const name = f?.fileName || "file";
  async function save() {
    setError("");
    try {
      const bytes = f?.fileContents && f.fileContents.length ? f.fileContents : await api.file(f?.fileId ?? "");
      download(bytes, name);
    } catch (e) {
      setError(errorText(e));
    }
  }
  return (
    <div class="file">
      <span class="file-name">{name}</span> <span class="muted">({bytesText(num(f?.fileSize) || f?.fileContents?.length || 0)})</span>{" "}
      <button class="secondary" onClick={() => void save()} aria-label={`Download ${name}`}>
        Download
      </button>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}

function SpeechBody({ api, m }: { api: Api; m: MessageInfo }) {
  const s = m.message?.speechMessage;
  const { bytes, error } = useAttachment(api, s?.fileContents, s?.fileId);
  const url = useObjectUrl(bytes, "audio/wav");
  const [text, setText] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState("");
  async function transcribe() {
    if (!bytes) return;
    setBusy(true);
    setErr("");
    try {
      setText(await api.transcribe(bytes));
    } catch (e) {
      setErr(errorText(e));
    } finally {
      setBusy(false);
    }
  }
  return (
    <div class="speech">
      {url ? <audio controls src={url} aria-label="Voice message" /> : <p>{error || "loading voice…"}</p>}
      <button class="secondary" disabled={!bytes || busy} onClick={() => void transcribe()}>
        {busy ? "Transcribing…" : "Transcribe"}
      </button>
      {text !== null && <p class="transcript">“{text}”</p>}
      {err && (
        <p class="error" role="alert">
          {err}
        </p>
      )}
    </div>
  );
}

function Composer({ onSend }: { onSend(c: pb.MessageContent.$Properties): Promise<void> }) {
  const [text, setText] = useState("");
  const [error, setError] = useState("");
  const [rec, setRec] = useState<Recorder | null>(null);
  const input = useRef<HTMLTextAreaElement>(null);
  // Leaving the chat mid-recording turns the microphone off.
  const recording = useRef<Recorder | null>(null);
  recording.current = rec;
  useEffect(() => () => recording.current?.cancel(), []);

  async function go(c: pb.MessageContent.$Properties) {
    setError("");
    try {
      await onSend(c);
    } catch (e) {
      setError(errorText(e));
    }
  }
  function sendText() {
    const t = text.trim();
    if (!t) return;
    setText("");
    void go({ messageType: MessageType.STRING, stringMessage: { content: t } });
    input.current?.focus();
  }
  async function attach(e: Event, kind: "image" | "file") {
    const el = e.currentTarget as HTMLInputElement;
    const f = el.files?.[0];
    el.value = "";
    if (!f) return;
    const bytes = await readFile(f);
    if (kind === "image") await go({ messageType: MessageType.IMAGE, imageMessage: { imageContent: bytes } });
    else await go({ messageType: MessageType.FILE, fileMessage: { fileName: f.name, fileSize: bytes.length, fileContents: bytes } });
  }
  async function record() {
    setError("");
    try {
      setRec(await Recorder.start());
    } catch (e) {
      setError(`cannot record: ${errorText(e)}`);
    }
  }
  async function stop() {
    const r = rec;
    setRec(null);
    if (!r) return;
    try {
      const wav = await r.stop();
      await go({ messageType: MessageType.SPEECH, speechMessage: { fileContents: wav } });
    } catch (e) {
      setError(errorText(e));
    }
  }

  return (
    <form class="composer" onSubmit={(e) => (e.preventDefault(), sendText())}>
      {error && (
        <p class="error" role="alert" data-testid="send-error">
          {error}
        </p>
      )}
      <label class="grow">
        <span class="sr-only">Message</span>
        <textarea
          ref={input}
          rows={1}
          placeholder="Message" title="Enter sends; Shift+Enter starts a new line"
          value={text}
          onInput={(e) => setText(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey) {
              e.preventDefault();
              sendText();
            }
          }}
        />
      </label>
      <div class="tools">
        <label class="button secondary" tabIndex={0} onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && (e.currentTarget.querySelector("input") as HTMLInputElement).click()}>
          Image
          <input type="file" accept="image/*" class="sr-only" aria-label="Send an image" tabIndex={-1} onChange={(e) => void attach(e, "image")} />
        </label>
        <label class="button secondary" tabIndex={0} onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && (e.currentTarget.querySelector("input") as HTMLInputElement).click()}>
          File
          <input type="file" class="sr-only" aria-label="Send a file" tabIndex={-1} onChange={(e) => void attach(e, "file")} />
        </label>
        {rec ? (
          <>
            <button type="button" class="recording" onClick={() => void stop()}>
              Stop and send voice
            </button>
            <button type="button" class="secondary" onClick={() => (rec.cancel(), setRec(null))}>
              Cancel
            </button>
          </>
        ) : (
          <button type="button" class="secondary" onClick={() => void record()}>
            Record voice
          </button>
        )}
        <button type="submit">Send</button>
      </div>
    </form>
  );
}
