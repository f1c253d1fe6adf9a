// An independent Modbus TCP server (modbus-serial, not pymodbus) for the interoperability
// tests and the ingest benchmark. Every register's value is a pure function of its unit and
// address, so a test knows what to expect without asking the server:
//   holding/input register a of unit u = (u * 1000 + a) mod 65536, coils/discrete: a mod 2.
// Options (all optional):
//   --port N           TCP port (required); prints "READY <port>" once listening
//   --units 1,2,3      unit ids that answer (default: all)
//   --silent 7,8       unit ids that never answer (requests time out)
//   --refuse 1:60,1:61 unit:address pairs refused with exception 2 (illegal data address)
//   --size N           registers per table (default 10000); reads beyond are refused too
"use strict";
const ModbusRTU = require("modbus-serial");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const port = parseInt(arg("port", ""), 10);
if (!(port > 0)) {
  process.stderr.write("modbus_server.js: --port is required\n");
  process.exit(2);
}
const list = (s) => (s ? s.split(",").filter(Boolean) : []);
const units = new Set(list(arg("units", "")).map(Number));
const silent = new Set(list(arg("silent", "")).map(Number));
const refuse = new Set(list(arg("refuse", "")));
const size = parseInt(arg("size", "10000"), 10);

function register(addr, unit) {
  if (silent.has(unit)) return new Promise(() => {}); // never answers
  if ((units.size && !units.has(unit)) || addr >= size || refuse.has(`${unit}:${addr}`)) {
    return Promise.reject({ modbusErrorCode: 0x02, msg: "Illegal data address" });
  }
  return (unit * 1000 + addr) % 65536;
}
function bit(addr, unit) {
  const r = register(addr, unit);
  return typeof r === "number" ? addr % 2 === 1 : r;
}

const vector = {
  getHoldingRegister: register,
  getInputRegister: register,
  getCoil: bit,
  getDiscreteInput: bit,
  setRegister: () => {},
  setCoil: () => {},
};
const server = new ModbusRTU.ServerTCP(vector, { host: "127.0.0.1", port, unitID: 255 });
server.on("socketError", () => {});
server.on("initialized", () => {
  const address = server._server.address();
  process.stdout.write(`READY ${address.port}\n`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
