// The notification WebSocket at /ws on the page's own origin: one binary
// ClientAuthenticationReq, then binary NotifyMessage frames. A lost connection comes back with
// exponential backoff (and jitter); `onReconnect` lets the app fetch what it missed. A refusal
// (close code 4001) means the login session is gone: no retry.
import { pb, requestId } from "./api";

export type LinkState = "connecting" | "online" | "offline";

export interface NotifyHandlers {
  onNotify(n: pb.NotifyMessage): void;
  onState(s: LinkState): void;
  onReconnect(): void;
  onRefused(reason: string): void;
}

const CLOSE_UNAUTHORIZED = 4001;

export class Notifier {
  private ws?: WebSocket;
  private attempts = 0;
  private timer?: number;
  private stopped = false;
  private everOpen = false;

  constructor(private session: string, private h: NotifyHandlers) {
    window.addEventListener("online", this.retryNow);
    this.connect();
  }

  /** The browser says the network is back: no need to wait out the backoff. */
  private retryNow = () => {
    if (this.stopped || this.ws?.readyState === WebSocket.OPEN || this.ws?.readyState === WebSocket.CONNECTING) return;
    window.clearTimeout(this.timer);
    this.connect();
  };

  private connect() {
    if (this.stopped) return;
    this.h.onState("connecting");
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      ws.send(pb.ClientAuthenticationReq.encode({ requestId: requestId(), sessionId: this.session }).finish());
      this.attempts = 0;
      this.h.onState("online");
      if (this.everOpen) this.h.onReconnect();
      this.everOpen = true;
    };
    ws.onmessage = (ev) => {
      try {
        this.h.onNotify(pb.NotifyMessage.decode(new Uint8Array(ev.data as ArrayBuffer)));
      } catch (e) {
        console.warn("undecodable notification", e);
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws || this.stopped) return;
      if (ev.code === CLOSE_UNAUTHORIZED) {
        this.stopped = true;
        this.h.onState("offline");
        this.h.onRefused(ev.reason || "login session is invalid or expired");
        return;
      }
      this.h.onState("offline");
      const delay = Math.min(15000, 500 * 2 ** this.attempts) * (0.75 + Math.random() / 2);
      this.attempts += 1;
      this.timer = window.setTimeout(() => this.connect(), delay);
    };
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.retryNow);
    window.clearTimeout(this.timer);
    this.ws?.close();
  }
}
