/**
 * Load generator of the benchmark, run as its own process so that it shares
 * an event loop with nothing else:
 *
 *   node dist/scripts/bench-load.js <job.json>
 *
 * `job.clients` clients, each with its own keep-alive https.Agent holding at
 * most one mutual-TLS connection, send GET requests back to back: a warm-up,
 * then a measured window. Prints one JSON line (a LoadResult) on stdout and
 * exits 0; exits 2 if the job cannot be read.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import type { LatencySummary, LoadJob, LoadResult } from './bench-types.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const REQUEST_TIMEOUT_MS = 10_000;
const MAX_SAMPLES = 10;

interface Reply {
  status: number;
  body: string;
  newConnection: boolean;
}

function get(agent: Agent, job: LoadJob, path: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: job.host, port: job.port, path, method: 'GET', agent, headers: { accept: 'application/json' } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), newConnection: !req.reusedSocket }),
        );
        res.on('error', reject);
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** The single key of a key container, or a reason why the body is not one. */
function singleKey(body: string, keyBytes: number): { id: string; key: string; bytes: Buffer } | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return `body is not JSON: ${body.slice(0, 200)}`;
  }
  const keys = (parsed as { keys?: unknown }).keys;
  if (!Array.isArray(keys) || keys.length !== 1) return `expected exactly one key: ${body.slice(0, 200)}`;
  const k = keys[0] as { key_ID?: unknown; key?: unknown };
  if (typeof k.key_ID !== 'string' || !UUID_RE.test(k.key_ID)) return `key_ID is not a UUID: ${body.slice(0, 200)}`;
  if (typeof k.key !== 'string') return `key is not a string: ${body.slice(0, 200)}`;
  const bytes = Buffer.from(k.key, 'base64');
  if (bytes.length !== keyBytes || bytes.toString('base64') !== k.key) {
    return `key ${k.key_ID} is not ${keyBytes} bytes of standard base64 (${bytes.length} bytes)`;
  }
  return { id: k.key_ID, key: k.key, bytes };
}

function summarize(latNs: bigint[]): LatencySummary | null {
  if (latNs.length === 0) return null;
  const ms = latNs.map((n) => Number(n) / 1e6).sort((a, b) => a - b);
  const at = (q: number) => ms[Math.min(ms.length - 1, Math.max(0, Math.ceil(q * ms.length) - 1))]!;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    p50: r(at(0.5)),
    p90: r(at(0.9)),
    p99: r(at(0.99)),
    max: r(ms[ms.length - 1]!),
    mean: r(ms.reduce((s, x) => s + x, 0) / ms.length),
  };
}

async function run(job: LoadJob): Promise<LoadResult> {
  const tls = { cert: readFileSync(job.cert), key: readFileSync(job.key), ca: readFileSync(job.ca) };
  const agents = Array.from(
    { length: job.clients },
    () => new Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1, ...tls }),
  );
  const keyBytes = job.keyBytes ?? 32;
  const expected = job.keys ? new Map(job.keys) : undefined;
  const collected = job.collectKeys ? new Map<string, string>() : undefined;
  let cursor = 0; // next index into job.keys: one shared queue, so each key_ID is taken exactly once

  let errors = 0;
  let mismatches = 0;
  const errorSamples: string[] = [];
  const mismatchSamples: string[] = [];
  const error = (msg: string) => {
    errors++;
    if (errorSamples.length < MAX_SAMPLES) errorSamples.push(msg);
  };
  const mismatch = (msg: string) => {
    mismatches++;
    if (mismatchSamples.length < MAX_SAMPLES) mismatchSamples.push(msg);
  };

  let connections = 0;
  let issued = 0;
  let warmupRequests = 0;
  let measured = 0;
  let measuredOk = 0;
  let lastEnd = 0n;
  const latencies: bigint[] = [];
  let stoppedEarly: string | undefined;

  const start = process.hrtime.bigint();
  const warmEnd = start + BigInt(job.warmupMs) * 1_000_000n;
  const end = warmEnd + BigInt(job.durationMs) * 1_000_000n;

  const client = async (agent: Agent) => {
    for (;;) {
      if (process.hrtime.bigint() >= end || stoppedEarly) return;
      if (job.maxRequests !== undefined && issued >= job.maxRequests) {
        stoppedEarly ??= `request budget of ${job.maxRequests} used up`;
        return;
      }
      let path = job.path;
      let keyId: string | undefined;
      if (job.mode === 'dec') {
        if (job.keys) {
          const pair = job.keys[cursor];
          if (!pair) {
            stoppedEarly ??= 'every key_ID was used';
            return;
          }
          cursor++;
          keyId = pair[0];
        } else {
          keyId = randomUUID();
        }
        path += encodeURIComponent(keyId);
      }
      issued++;
      const t0 = process.hrtime.bigint();
      let reply: Reply;
      try {
        reply = await get(agent, job, path);
      } catch (e) {
        error(`${job.mode}${keyId ? ` ${keyId}` : ''}: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 20)); // do not spin on a refused connection
        continue;
      }
      const t1 = process.hrtime.bigint();
      if (reply.newConnection) connections++;
      const inWindow = t1 >= warmEnd;
      if (inWindow) {
        measured++;
        lastEnd = t1 > lastEnd ? t1 : lastEnd;
      } else {
        warmupRequests++;
      }
      if (reply.status !== 200) {
        error(`${job.mode}${keyId ? ` ${keyId}` : ''}: HTTP ${reply.status} ${reply.body.slice(0, 300)}`);
        continue;
      }
      if (inWindow) {
        measuredOk++;
        latencies.push(t1 - t0);
      }
      if (job.mode === 'status') continue;
      const k = singleKey(reply.body, keyBytes);
      if (typeof k === 'string') {
        mismatch(k);
        continue;
      }
      if (collected) {
        if (collected.has(k.id)) mismatch(`key_ID ${k.id} was delivered twice`);
        else collected.set(k.id, k.key);
      }
      if (expected && keyId !== undefined) {
        const want = expected.get(keyId);
        if (k.id !== keyId) mismatch(`asked for ${keyId}, got ${k.id}`);
        else if (want === undefined || !Buffer.from(want, 'base64').equals(k.bytes)) {
          mismatch(`key ${keyId}: dec_keys returned other key bytes than enc_keys`);
        }
      }
    }
  };

  await Promise.all(agents.map((a) => client(a)));
  for (const a of agents) a.destroy();

  const seconds = lastEnd > warmEnd ? Number(lastEnd - warmEnd) / 1e9 : 0;
  const cpu = process.cpuUsage();
  const result: LoadResult = {
    label: job.label,
    ok: errors === 0 && mismatches === 0 && measuredOk > 0,
    requests: measured,
    warmupRequests,
    seconds: Math.round(seconds * 1000) / 1000,
    rps: seconds > 0 ? Math.round((measuredOk / seconds) * 10) / 10 : 0,
    latencyMs: summarize(latencies),
    errors,
    errorSamples,
    mismatches,
    mismatchSamples,
    connections,
    cpuSeconds: Math.round(((cpu.user + cpu.system) / 1e6) * 1000) / 1000,
  };
  if (stoppedEarly) result.stoppedEarly = stoppedEarly;
  if (job.mode === 'dec' && job.keys) result.unusedKeys = job.keys.length - cursor;
  if (collected) result.keys = [...collected];
  return result;
}

async function main(): Promise<void> {
  let job: LoadJob;
  try {
    job = JSON.parse(readFileSync(process.argv[2] ?? '', 'utf8')) as LoadJob;
  } catch (e) {
    process.stderr.write(`bench-load: cannot read the job file ${process.argv[2]}: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const result = await run(job);
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
}

void main();
