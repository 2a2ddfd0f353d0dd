// Runs promptfoo `javascript` assertions for Bastion, one JSON request per stdin line.
// Started by bastion.evals.promptfoo.sandbox in a minimal environment, killed when an
// assertion runs past its time limit.
'use strict';
const readline = require('readline');
const { pathToFileURL } = require('url');

const write = process.stdout.write.bind(process.stdout);
const quiet = () => {};
console.log = quiet;
console.info = quiet;
console.warn = quiet;
console.error = quiet;
console.debug = quiet;
process.stdout.write = () => true;

async function load(path, name) {
  let mod;
  if (path.endsWith('.mjs')) {
    mod = await import(pathToFileURL(path).href);
  } else {
    mod = require(path);
  }
  if (name) {
    const fn = mod[name] || (mod.default && mod.default[name]);
    if (typeof fn !== 'function') throw new Error(`${path} has no function ${name}`);
    return fn;
  }
  if (typeof mod === 'function') return mod;
  if (mod && typeof mod.default === 'function') return mod.default;
  throw new Error(`${path} does not export a function`);
}

function inline(code) {
  const trimmed = code.trim();
  const body = trimmed.includes('\n') || trimmed.startsWith('return ') ? code : `return ${trimmed}`;
  return new Function('output', 'context', body);
}

function jsonable(value) {
  return JSON.parse(JSON.stringify(value === undefined ? null : value, (k, v) =>
    typeof v === 'number' && !Number.isFinite(v) ? null : v));
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
let chain = Promise.resolve();
rl.on('line', (line) => {
  chain = chain.then(async () => {
    let reply;
    try {
      const request = JSON.parse(line);
      const fn = request.path ? await load(request.path, request.function) : inline(request.code);
      const result = await fn(request.output, request.context);
      reply = { ok: true, result: jsonable(result) };
    } catch (err) {
      reply = { ok: false, error: String(err && err.message ? `${err.name}: ${err.message}` : err).slice(0, 2000) };
    }
    write(JSON.stringify(reply) + '\n');
  });
});
