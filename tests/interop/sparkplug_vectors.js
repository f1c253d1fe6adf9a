// Sparkplug B messages encoded by Eclipse Tahu's JavaScript package (sparkplug-payload), an
// implementation independent of edgeflow: a node's birth with units, text, 64-bit, DataSet and
// Bytes metrics; data with historical and transient values and a Template; a late death of
// an earlier session, the real death; a timestamp of 2^64 - 1. Prints JSON to stdout:
// [{"step", "topic", "hex"}].
"use strict";
const Long = require("long");
const sp = require("sparkplug-payload").get("spBv1.0");

const T0 = 1767225600000;
const kw = { engUnit: { type: "String", value: "kW" } };
const messages = [
  ["birth", "spBv1.0/plant/NBIRTH/edge1", {
    timestamp: T0, seq: 0,
    metrics: [
      { name: "bdSeq", type: "UInt64", value: Long.fromNumber(3, true) },
      { name: "Inverter/ACPower", alias: 1, type: "Double", value: 50.5, properties: kw },
      { name: "Mode", alias: 2, type: "String", value: "AUTO" },
      { name: "Energy", alias: 3, type: "UInt64", value: Long.fromString("1152921504606846976", true) },
      { name: "Counter", alias: 4, type: "UInt64", value: Long.fromNumber(9007199254740991, true) },
      { name: "Table", alias: 5, type: "DataSet",
        value: { numOfColumns: 1, columns: ["a"], types: ["Int32"], rows: [[1], [2]] } },
      { name: "Blob", alias: 6, type: "Bytes", value: Buffer.from([1, 2, 3]) },
      { name: "Running", alias: 7, type: "Boolean", value: true },
    ],
  }],
  ["data", "spBv1.0/plant/NDATA/edge1", {
    timestamp: T0 + 2000, seq: 1,
    metrics: [
      { alias: 1, type: "Double", value: 51.0, timestamp: T0 + 1000, isHistorical: true },
      { alias: 1, type: "Double", value: 52.0, timestamp: T0 + 2000, isTransient: true },
      { alias: 2, type: "String", value: "MANUAL", timestamp: T0 + 2000 },
      { alias: 3, type: "UInt64", value: Long.fromString("1152921504606846977", true), timestamp: T0 + 2000 },
      { name: "UDT", type: "Template", value: { isDefinition: false, templateRef: "Motor", metrics: [] }, timestamp: T0 + 2000 },
    ],
  }],
  ["old-death", "spBv1.0/plant/NDEATH/edge1", {
    metrics: [{ name: "bdSeq", type: "UInt64", value: Long.fromNumber(2, true) }],
  }],
  ["bad-time", "spBv1.0/plant/NDATA/edge1", {
    timestamp: Long.MAX_UNSIGNED_VALUE, seq: 2,
    metrics: [{ alias: 1, type: "Double", value: 53.0 }],
  }],
  ["death", "spBv1.0/plant/NDEATH/edge1", {
    metrics: [{ name: "bdSeq", type: "UInt64", value: Long.fromNumber(3, true) }],
  }],
];
const out = messages.map(([step, topic, payload]) => ({
  step, topic, hex: Buffer.from(sp.encodePayload(payload)).toString("hex"),
}));
process.stdout.write(JSON.stringify(out) + "\n");
