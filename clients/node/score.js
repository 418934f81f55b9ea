// The Node.js example of docs/api.md: fedprofile.v2.Scoring with @grpc/grpc-js and @grpc/proto-loader.
//
//   node score.js score  --address HOST:PORT --ca ca.crt --cert alice.crt --key alice.key --model car-owner@prod --ids A,B
//   node score.js stream ...same... --ids-file ids.txt        (ScoreStream: any number of IDs)
//   node score.js bench  ...same... --ids A,B --calls 200 [--warm 200]  (sequential one-ID Score calls: latencies
//                                                            in ms, after --warm untimed calls on the same channel)
//   node score.js nocert --address HOST:PORT --ca ca.crt      (what a client without a certificate is told)
// Prints one JSON document on stdout. --tls-name NAME: the name to check in the node's certificate when the
// address's host is not one of its names (e.g. dialling an IP address).
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "proto", "fedprofile_v2.proto");

function args(argv) {
  const out = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith("--")) out[argv[i].slice(2)] = argv[++i];
    else out._.push(argv[i]);
  }
  return out;
}

function client(opts, withCert = true) {
  // keepCase: field names as in the .proto; enums as their names; uint64 as JS numbers (all < 2^53 here).
  const def = protoLoader.loadSync(PROTO, { keepCase: true, enums: String, longs: Number, defaults: true });
  const { Scoring } = grpc.loadPackageDefinition(def).fedprofile.v2;
  const creds = withCert
    ? grpc.credentials.createSsl(fs.readFileSync(opts.ca), fs.readFileSync(opts.key), fs.readFileSync(opts.cert))
    : grpc.credentials.createSsl(fs.readFileSync(opts.ca));
  const options = opts["tls-name"] ? { "grpc.ssl_target_name_override": opts["tls-name"] } : {};
  return new Scoring(opts.address, creds, options);
}

// JSON has no NaN (an unknown customer's probabilities): print it as the string "NaN".
const nanAsText = (key, value) => (typeof value === "number" && Number.isNaN(value) ? "NaN" : value);

function deadline(seconds) {
  return { deadline: new Date(Date.now() + seconds * 1000) };
}

function score(stub, model, ids) {
  return new Promise((resolve, reject) => {
    stub.Score({ params: { model }, customer_ids: ids }, deadline(30), (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

function stream(stub, model, ids, perMessage = 10000) {
  return new Promise((resolve, reject) => {
    const call = stub.ScoreStream(deadline(3600));
    const counts = {};
    let rows = 0, messages = 0, head = null, ordered = true;
    call.on("data", (m) => {
      if (m.offset !== rows) ordered = false;  // rows arrive in the order the IDs were sent
      head = head || { model_job_id: m.model_job_id, tags: m.tags, models: m.models };
      for (const r of m.rows) counts[r.status] = (counts[r.status] || 0) + 1;
      rows += m.rows.length;
      messages++;
    });
    call.on("error", reject);
    call.on("end", () => resolve({ ...head, rows, messages, ordered, statuses: counts }));
    for (let i = 0; i < ids.length; i += perMessage) {
      call.write({ params: i === 0 ? { model } : null, customer_ids: ids.slice(i, i + perMessage) });
    }
    call.end();
  });
}

async function main() {
  const opts = args(process.argv.slice(2));
  const command = opts._[0];
  const ids = opts["ids-file"] ? fs.readFileSync(opts["ids-file"], "utf8").split("\n").filter(Boolean)
    : (opts.ids || "").split(",").filter(Boolean);
  if (command === "nocert") {
    const stub = client(opts, false);
    try {
      await score(stub, "latest", ["x"]);
      console.log(JSON.stringify({ answered: true }));
    } catch (err) {
      console.log(JSON.stringify({ answered: false, code: grpc.status[err.code], details: err.details }));
    }
    return;
  }
  const stub = client(opts);
  if (command === "score") {
    console.log(JSON.stringify(await score(stub, opts.model, ids), nanAsText));
  } else if (command === "stream") {
    console.log(JSON.stringify(await stream(stub, opts.model, ids)));
  } else if (command === "bench") {
    const calls = Number(opts.calls || 200);
    // Warm: the connection, and V8's compiled code for the call path (its first hundred calls run interpreted
    // or baseline code, slower). At least one call; 200 is what benchmarks.serving gives the Python client.
    const warm = Math.max(1, Number(opts.warm || 1));
    for (let i = 0; i < warm; i++) await score(stub, opts.model, [ids[i % ids.length]]);
    const ms = [];
    for (let i = 0; i < calls; i++) {
      const started = process.hrtime.bigint();
      await score(stub, opts.model, [ids[i % ids.length]]);
      ms.push(Number(process.hrtime.bigint() - started) / 1e6);
    }
    console.log(JSON.stringify({ calls, ms }));
  } else {
    throw new Error(`unknown command ${command}: use score, stream, bench or nocert`);
  }
}

main().catch((err) => {
  console.error(`score.js: ${grpc.status[err.code] || "error"}: ${err.details || err.message}`);
  process.exit(1);
});
