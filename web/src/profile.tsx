import { useState } from "preact/hooks";
import { auth, errorText, type Api, type UserInfo } from "./api";
import { Avatar, readFile } from "./util";

export function Profile({ api, me, onChanged, onBack }: { api: Api; me: UserInfo; onChanged(u: UserInfo): void; onBack(): void }) {
  const [nickname, setNickname] = useState(me.nickname);
  const [description, setDescription] = useState(me.description);
  const [phone, setPhone] = useState(me.phone);
  const [codeId, setCodeId] = useState("");
  const [code, setCode] = useState("");
  const [error, setError] = useState("");
  const [done, setDone] = useState("");

  async function run(what: () => Promise<unknown>, ok: string) {
    setError("");
    setDone("");
    try {
      await what();
      onChanged(await api.me());
      setDone(ok);
    } catch (e) {
      setError(errorText(e));
    }
  }

  return (
    <section class="panel" aria-labelledby="profile-h">
      <header class="panel-head">
        <button class="back" onClick={onBack} aria-label="Back to chats">
          ←
        </button>
        <h2 id="profile-h">Your profile</h2>
      </header>
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
      <div class="profile-avatar">
        <Avatar user={me} size={72} />
        <label class="button secondary" tabIndex={0} onKeyDown={(e) => (e.key === "Enter" || e.key === " ") && (e.currentTarget.querySelector("input") as HTMLInputElement).click()}>
          Change avatar
          <input
            type="file"
            accept="image/*"
            class="sr-only"
            tabIndex={-1}
            aria-label="Choose an avatar image"
            onChange={(e) => {
              const f = e.currentTarget.files?.[0];
              e.currentTarget.value = "";
              if (f) void run(async () => api.setAvatar(await readFile(f)), "Avatar changed");
            }}
          />
        </label>
      </div>
      <form onSubmit={(e) => (e.preventDefault(), run(() => api.setNickname(nickname), "Nickname saved"))}>
        <label>
          Nickname
          <input name="nickname" value={nickname} onInput={(e) => setNickname(e.currentTarget.value)} />
        </label>
        <button type="submit">Save nickname</button>
      </form>
      <form onSubmit={(e) => (e.preventDefault(), run(() => api.setDescription(description), "Description saved"))}>
        <label>
          Description
          <textarea name="description" rows={2} value={description} onInput={(e) => setDescription(e.currentTarget.value)} />
        </label>
        <button type="submit">Save description</button>
      </form>
      <form onSubmit={(e) => (e.preventDefault(), run(() => api.setPhone(phone, codeId, code), "Phone saved"))}>
        <label>
          Phone number
          <input name="phone" type="tel" value={phone} onInput={(e) => setPhone(e.currentTarget.value)} />
        </label>
        <button
          type="button"
          class="secondary"
          onClick={async () => {
            setError("");
            try {
              setCodeId(await auth.phoneCode(phone));
              setDone("Code sent. With the development SMS sender it is in the server's log.");
            } catch (e) {
              setError(errorText(e));
            }
          }}
        >
          Send code
        </button>
        <label>
          Code
          <input name="code" inputMode="numeric" value={code} onInput={(e) => setCode(e.currentTarget.value)} />
        </label>
        <button type="submit" disabled={!codeId}>
          Save phone
        </button>
      </form>
    </section>
  );
}
