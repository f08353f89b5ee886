import { useEffect, useState } from "preact/hooks";
import { num, type UserInfo } from "./api";

/** An object URL for bytes, revoked when they change or the component goes. */
export function useObjectUrl(bytes: Uint8Array | null | undefined, type: string): string | undefined {
  const [url, setUrl] = useState<string>();
  useEffect(() => {
    if (!bytes || bytes.length === 0) {
      setUrl(undefined);
      return;
    }
    const u = URL.createObjectURL(new Blob([bytes as BlobPart], { type }));
    setUrl(u);
    return () => URL.revokeObjectURL(u);
  }, [bytes, type]);
  return url;
}

/** The image type from the first bytes (avatars and images travel without a type). */
export function imageType(b: Uint8Array): string {
  if (b[0] === 0x89 && b[1] === 0x50) return "image/png";
  if (b[0] === 0xff && b[1] === 0xd8) return "image/jpeg";
  if (b[0] === 0x47 && b[1] === 0x49) return "image/gif";
  if (b[0] === 0x52 && b[8] === 0x57) return "image/webp";
  if (b[0] === 0x3c) return "image/svg+xml";
  return "application/octet-stream";
}

export function Avatar({ user, name, bytes, size = 36 }: { user?: UserInfo | null; name?: string; bytes?: Uint8Array | null; size?: number }) {
  const data = bytes ?? user?.avatar;
  const url = useObjectUrl(data, data ? imageType(data) : "");
  const label = name ?? user?.nickname ?? "?";
  const style = { width: `${size}px`, height: `${size}px` };
  if (url) return <img class="avatar" src={url} alt="" style={style} />;
  return (
    <span class="avatar initials" aria-hidden="true" style={style}>
      {(label || "?").slice(0, 1).toUpperCase()}
    </span>
  );
}

export function time(ts: unknown): string {
  const d = new Date(num(ts) * 1000);
  const today = new Date();
  return d.toDateString() === today.toDateString()
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function bytesText(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export async function readFile(f: File): Promise<Uint8Array> {
  return new Uint8Array(await f.arrayBuffer());
}

export function download(bytes: Uint8Array, name: string) {
  const url = URL.createObjectURL(new Blob([bytes as BlobPart]));
  const a = document.createElement("a");
  a.href = url;
  a.download = name || "file";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
