// The PSK file nbdkit and qemu-nbd read (GnuTLS psktool's format): one
// `username:hexkey` per line, the key as an even number of hex digits. Pure:
// takes the text, returns the keys or the first bad line.
/** Identities are what a TLS-PSK ClientKeyExchange can carry (RFC 4279: up to 2^16-1 bytes); keys at least 128 bits. */
export const PSK_IDENTITY_BYTES_MAX = 65535;
export const PSK_KEY_BYTES_MIN = 16;
export const PSK_KEY_BYTES_MAX = 512;

export type PskParse = { ok: true; keys: Map<string, Buffer> } | { ok: false; reason: string };

export function parsePskFile(text: string): PskParse {
  const keys = new Map<string, Buffer>();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, "");
    if (line.trim() === "") continue;
    const at = `line ${i + 1}`;
    // The identity may itself hold no colon: the key is after the last one.
    const colon = line.lastIndexOf(":");
    if (colon <= 0) return { ok: false, reason: `${at}: expected username:hexkey` };
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (Buffer.byteLength(identity, "utf8") > PSK_IDENTITY_BYTES_MAX) return { ok: false, reason: `${at}: username longer than ${PSK_IDENTITY_BYTES_MAX} bytes` };
    if (!/^([0-9a-fA-F]{2})+$/.test(hex)) return { ok: false, reason: `${at}: key of ${JSON.stringify(identity)} is not an even number of hex digits` };
    const key = Buffer.from(hex, "hex");
    if (key.length < PSK_KEY_BYTES_MIN || key.length > PSK_KEY_BYTES_MAX) {
      return { ok: false, reason: `${at}: key of ${JSON.stringify(identity)} is ${key.length} bytes, not ${PSK_KEY_BYTES_MIN}..${PSK_KEY_BYTES_MAX}` };
    }
    if (keys.has(identity)) return { ok: false, reason: `${at}: username ${JSON.stringify(identity)} appears twice` };
    keys.set(identity, key);
  }
  if (keys.size === 0) return { ok: false, reason: "no username:hexkey line" };
  return { ok: true, keys };
}
