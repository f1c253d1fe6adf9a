// An independent OPC UA server (node-opcua, not asyncua) for the interoperability tests and
// the ingest benchmark. Address space, with values that are pure functions of time so a test
// knows what to expect:
//   Objects/Pump-07                      a device object with its variables directly under it
//     Speed (Double)                     1000 + tick, changes every --update-ms
//     Running (Boolean)                  true
//     Setpoint (Double)                  42.5, a static value whose source time is 8 days old
//     Mode (String)                      "AUTO"
//     Flow/Rate (Double)                 a browse name that contains '/' (value 7.25)
//   Objects/Plant/Area-A/Line-1/Mixer-01/{Temperature, Level}   a folder tree (depth 4)
//   Objects/Plant/Area-A/Line-1/Cell-2/Robot-3/Axis-1/Torque    deeper than the rest
//   Objects/Bulk/N00000..N<count-1>      --count Double variables (benchmark), value = tick
// Security: None and Basic256Sha256 Sign/SignAndEncrypt; with --pki DIR, client certificates
// must be trusted (DIR/trusted/certs); untrusted ones land in DIR/rejected. With --user U
// --password P, anonymous sessions are refused.
// Prints "READY <endpoint>" once listening; SIGTERM stops it.
"use strict";
const path = require("path");
const { OPCUAServer } = require("node-opcua-server");
const { SecurityPolicy, MessageSecurityMode } = require("node-opcua-secure-channel");
const { Variant, DataType } = require("node-opcua-variant");
const { StatusCodes } = require("node-opcua-status-code");
const { OPCUACertificateManager } = require("node-opcua-certificate-manager");

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const port = parseInt(arg("port", ""), 10);
if (!(port > 0)) {
  process.stderr.write("opcua_server.js: --port is required\n");
  process.exit(2);
}
const updateMs = parseInt(arg("update-ms", "500"), 10);
const count = parseInt(arg("count", "0"), 10);
const pki = arg("pki", "");
const user = arg("user", "");
const password = arg("password", "");
const maxNodesPerRead = parseInt(arg("max-nodes-per-read", "0"), 10);
const maxMonitoredItemsPerCall = parseInt(arg("max-monitored-items-per-call", "0"), 10);

async function main() {
  let tick = 0;
  const options = {
    port,
    hostname: "127.0.0.1",
    resourcePath: "/interop",
    securityPolicies: [SecurityPolicy.None, SecurityPolicy.Basic256Sha256],
    securityModes: [MessageSecurityMode.None, MessageSecurityMode.Sign, MessageSecurityMode.SignAndEncrypt],
    allowAnonymous: !user,
    maxConnectionsPerEndpoint: 1000,
    serverCapabilities: {
      maxSessions: 100,
      operationLimits: {
        maxNodesPerRead: maxNodesPerRead || undefined,
        maxMonitoredItemsPerCall: maxMonitoredItemsPerCall || undefined,
      },
    },
  };
  if (user) {
    options.userManager = { isValidUser: (u, p) => u === user && p === password };
  }
  if (pki) {
    options.serverCertificateManager = new OPCUACertificateManager({
      rootFolder: path.resolve(pki),
      automaticallyAcceptUnknownCertificate: false,
    });
    options.userCertificateManager = new OPCUACertificateManager({
      rootFolder: path.join(path.resolve(pki), "user"),
      automaticallyAcceptUnknownCertificate: false,
    });
  }
  const server = new OPCUAServer(options);
  await server.initialize();
  const space = server.engine.addressSpace;
  const ns = space.getOwnNamespace();
  const objects = space.rootFolder.objects;

  const dyn = (parent, name, dataType, fn) =>
    ns.addVariable({
      componentOf: parent,
      browseName: name,
      nodeId: `s=${parent.browseName.name}.${name}`,
      dataType,
      value: { get: () => new Variant({ dataType: DataType[dataType], value: fn() }) },
      minimumSamplingInterval: 50,
    });

  const pump = ns.addObject({ organizedBy: objects, browseName: "Pump-07", nodeId: "s=Pump-07" });
  const speed = ns.addVariable({ componentOf: pump, browseName: "Speed", nodeId: "s=Pump-07.Speed", dataType: "Double" });
  speed.setValueFromSource(new Variant({ dataType: DataType.Double, value: 1000 }));
  dyn(pump, "Running", "Boolean", () => true);
  const setpoint = ns.addVariable({ componentOf: pump, browseName: "Setpoint", nodeId: "s=Pump-07.Setpoint", dataType: "Double" });
  const eightDaysAgo = new Date(Date.now() - 8 * 86400 * 1000);
  setpoint.setValueFromSource(new Variant({ dataType: DataType.Double, value: 42.5 }), StatusCodes.Good, eightDaysAgo);
  dyn(pump, "Mode", "String", () => "AUTO");
  const odd = ns.addVariable({ componentOf: pump, browseName: "Flow/Rate", nodeId: "s=Pump-07.FlowRate", dataType: "Double" });
  odd.setValueFromSource(new Variant({ dataType: DataType.Double, value: 7.25 }));

  const folder = (parent, name) => ns.addFolder(parent, { browseName: name, nodeId: `s=${name}` });
  const plant = folder(objects, "Plant");
  const area = folder(plant, "Area-A");
  const line = folder(area, "Line-1");
  const mixer = ns.addObject({ organizedBy: line, browseName: "Mixer-01", nodeId: "s=Mixer-01" });
  dyn(mixer, "Temperature", "Double", () => 60 + (tick % 10));
  dyn(mixer, "Level", "Double", () => 0.5);
  const cell = folder(line, "Cell-2");
  const robot = ns.addObject({ organizedBy: cell, browseName: "Robot-3", nodeId: "s=Robot-3" });
  const axis = ns.addObject({ componentOf: robot, browseName: "Axis-1", nodeId: "s=Robot-3.Axis-1" });
  dyn(axis, "Torque", "Double", () => 12.5);

  const bulk = [];
  if (count > 0) {
    const b = folder(objects, "Bulk");
    for (let i = 0; i < count; i++) {
      const v = ns.addVariable({
        componentOf: b, browseName: `N${String(i).padStart(5, "0")}`,
        nodeId: `s=Bulk.N${String(i).padStart(5, "0")}`, dataType: "Double", minimumSamplingInterval: 50,
      });
      v.setValueFromSource(new Variant({ dataType: DataType.Double, value: 0 }));
      bulk.push(v);
    }
  }

  setInterval(() => {
    tick += 1;
    speed.setValueFromSource(new Variant({ dataType: DataType.Double, value: 1000 + tick }));
    for (const v of bulk) v.setValueFromSource(new Variant({ dataType: DataType.Double, value: tick }));
  }, updateMs);

  await server.start();
  process.stdout.write(`READY ${server.getEndpointUrl()}\n`);
  const stop = async () => {
    await server.shutdown(100);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  process.stderr.write(`opcua_server.js: ${e.stack || e}\n`);
  process.exit(1);
});
