// Decodes Sparkplug B messages with Eclipse Tahu's JavaScript package (sparkplug-payload), an
// implementation independent of edgeflow's encoder. Reads "topic hexpayload" lines on stdin,
// prints JSON: [{"topic", "payload"}] with 64-bit values as decimal strings. With --rebirth,
// prints the hex of an NCMD "Node Control/Rebirth" payload instead.
"use strict";
const sp = require("sparkplug-payload").get("spBv1.0");

function plain(v) {
  if (v === null || v === undefined) return v;
  if (typeof v === "object" && typeof v.toString === "function" && v.high !== undefined) return v.toString();
  if (Buffer.isBuffer(v)) return v.toString("hex");
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

if (process.argv.includes("--rebirth")) {
  const p = sp.encodePayload({ timestamp: Date.now(), metrics: [
    { name: "Node Control/Rebirth", type: "Boolean", value: true }] });
  process.stdout.write(Buffer.from(p).toString("hex") + "\n");
} else {
  let input = "";
  process.stdin.on("data", (d) => { input += d; });
  process.stdin.on("end", () => {
    const out = input.split("\n").filter((l) => l.trim()).map((line) => {
      const [topic, hex] = line.trim().split(" ");
      return { topic, payload: plain(sp.decodePayload(Buffer.from(hex, "hex"))) };
    });
    process.stdout.write(JSON.stringify(out) + "\n");
  });
}
