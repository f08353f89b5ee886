import { useState } from "preact/hooks";
import { auth, errorText } from "./api";

/** Name + password, or phone + SMS code. */
export function Login({ onSession, notice }: { onSession(s: string): void; notice?: string }) {
  const [error, setError] = useState(notice ?? "");
  const [info, setInfo] = useState("");
  const [busy, setBusy] = useState(false);
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [phone, setPhone] = useState("");
  const [codeId, setCodeId] = useState("");
  const [code, setCode] = useState("");

  async function run(what: () => Promise<void>) {
    setBusy(true);
    setError("");
    setInfo("");
    try {
      await what();
    } catch (e) {
      setError(errorText(e));
    } finally {
      setBusy(false);
    }
  }

  const passwordLogin = () => run(async () => onSession(await auth.login(name, password)));
  const passwordRegister = () =>
    run(async () => {
      await auth.register(name, password);
      onSession(await auth.login(name, password));
    });
  const sendCode = () =>
    run(async () => {
      setCodeId(await auth.phoneCode(phone));
      setInfo(`Code sent to ${phone}. With the development SMS sender (a standalone chatmesh), the code is written to the server's log.`);
    });
  const phoneLogin = () => run(async () => onSession(await auth.phoneLogin(phone, codeId, code)));
  const phoneRegister = () =>
    run(async () => {
      await auth.phoneRegister(phone, codeId, code);
      setCodeId("");
      setCode("");
      setInfo("Registered. A code is good for one use: send a new code to log in.");
    });

  return (
    <main class="login">
      <h1>chatmesh</h1>
      {error && (
        <p class="error" role="alert" data-testid="login-error">
          {error}
        </p>
      )}
      {info && (
        <p class="info" role="status">
          {info}
        </p>
      )}
      <section aria-labelledby="pw-h">
        <h2 id="pw-h">Name and password</h2>
        <form onSubmit={(e) => (e.preventDefault(), passwordLogin())}>
          <label>
            Name
            <input name="nickname" autocomplete="username" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
          </label>
          <label>
            Password
            <input
              name="password"
              type="password"
              autocomplete="current-password"
              required
              value={password}
              onInput={(e) => setPassword(e.currentTarget.value)}
            />
          </label>
          <div class="row">
            <button type="submit" disabled={busy}>
              Log in
            </button>
            <button type="button" class="secondary" disabled={busy} onClick={passwordRegister}>
              Register
            </button>
          </div>
        </form>
      </section>
      <section aria-labelledby="ph-h">
        <h2 id="ph-h">Phone and code</h2>
        <form onSubmit={(e) => (e.preventDefault(), phoneLogin())}>
          <label>
            Phone number
            <input name="phone" type="tel" autocomplete="tel" value={phone} onInput={(e) => setPhone(e.currentTarget.value)} />
          </label>
          <button type="button" class="secondary" disabled={busy || !phone} onClick={sendCode}>
            Send code
          </button>
          <label>
            Code
            <input name="code" inputMode="numeric" autocomplete="one-time-code" value={code} onInput={(e) => setCode(e.currentTarget.value)} />
          </label>
          <div class="row">
            <button type="submit" disabled={busy || !codeId}>
              Log in with code
            </button>
            <button type="button" class="secondary" disabled={busy || !codeId} onClick={phoneRegister}>
              Register with code
            </button>
          </div>
        </form>
        <p class="hint">A standalone chatmesh (the development SMS sender) writes the codes to its server log.</p>
      </section>
    </main>
  );
}
