/**
 * The ledger section of `npm run bench`:
 *   1. tracking sink rows/s (ClickHouseSink, the tracking processor's group commit, JSONEachRow) vs
 *      clickhouse-client inserting the same rows from a JSONEachRow file, same block size, same table;
 *   2. rule evaluation per prediction with a 20-rule set vs the defaults (one threshold rule);
 *   3. frequency-cap check (one Lua script per decision) p50/p99 vs a Redis PING round trip, same client.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type { FabricConfig } from '../../topology/config.js';
import { createClickHouse, sqlIdentifier } from '../../topology/runtime/clickhouse.js';
import type { TaskId } from '../../topology/runtime/processor.js';
import { ClickHouseSink } from '../../processors/tracking/clickhouse-sink.js';
import { mappingFor } from '../../processors/tracking/rows.js';
import type { Prediction } from '../../schemas/types.generated.js';
import { compileRules, MODEL_DEFAULT_RULES } from '../../serving/rules/engine.js';
import { parseRuleSet } from '../../serving/rules/spec.js';
import { FrequencyCaps } from '../../serving/rules/caps.js';
import { quantile } from './stats.js';

export interface LedgerSizes {
  readonly sinkRows: number;
  readonly sinkBatch: number;
  readonly repetitions: number;
  readonly ruleEvaluations: number;
  readonly capChecks: number;
}

export interface Pair {
  readonly ours: number[];
  readonly reference: number[];
}

/** A prediction row as tracking writes it. */
function predictionRows(n: number): Record<string, unknown>[] {
  const mapping = mappingFor('predictions.fraud')!;
  const out: Record<string, unknown>[] = [];
  for (let i = 0; i < n; i++) {
    const p: Prediction = {
      event_id: `bench-${i}`, entity_id: `C${i % 5000}`, model: 'fraud', version: '1.0.0', score: (i % 997) / 997, decision: i % 10 === 0 ? 'review' : 'allow', reasons: ['score 0.1000 < review 0.5'], fallback: false, provider: 'cpu',
      event_ts: 1_763_000_000_000 + i * 10, features: { amount: i, txn_count_1h: i % 7, amount_sum_24h: i * 3 }, source_topic: 'events.transactions', source_partition: i % 3, source_offset: i, origin: 'stream', rules_version: 1, rules_fired: ['score'], experiment: '', arm: '', latency_ms: 0,
    };
    out.push(...mapping.rows({ topic: 'predictions.fraud', partition: 0, offset: String(i), key: p.entity_id, value: p, timestamp: 0, headers: {} } as never));
  }
  return out;
}

async function clickhouseClient(config: FabricConfig, query: string, file: string, blockSize: number): Promise<void> {
  const url = new URL(config.clickhouseUrl);
  const args = ['--host', url.hostname, '--port', String(config.clickhouseTcpPort), '--user', config.clickhouseUser, '--max_insert_block_size', String(blockSize), '--query', query];
  if (config.clickhousePassword) args.push('--password', config.clickhousePassword);
  await new Promise<void>((resolve, reject) => {
    const child = spawn('clickhouse-client', args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`clickhouse-client exited ${code}: ${err.trim().slice(0, 300)}`))));
    createReadStream(file).pipe(child.stdin);
  });
}

/**
 * Rows/s: the sink as tracking drives it (six tasks, the input partitions, each adding a third of an
 * insert and awaiting its flush before its next batch; inserts of sinkBatch rows) vs clickhouse-client
 * loading the same rows from a file with the same block size.
 */
export async function sinkPair(config: FabricConfig, database: string, tmp: string, sizes: LedgerSizes, progress: (line: string) => void): Promise<Pair> {
  const db = sqlIdentifier(database);
  const client = createClickHouse(config);
  const rows = predictionRows(sizes.sinkRows);
  const file = join(tmp, 'ledger-rows.ndjson');
  await writeFile(file, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const ours: number[] = [];
  const reference: number[] = [];
  try {
    await client.command({ query: `CREATE DATABASE IF NOT EXISTS ${db}` });
    for (const t of ['sink_ours', 'sink_ref']) {
      await client.command({ query: `DROP TABLE IF EXISTS ${db}.${t}` });
      await client.command({ query: `CREATE TABLE ${db}.${t} (event_id String, entity_id String, model String, version String, score Nullable(Float64), decision String, reasons Array(String), fallback UInt8, provider String, event_ts_ms UInt64, feature_names Array(String), feature_values Array(Nullable(Float64)), rules_version UInt32, rules_fired Array(String), experiment String, arm String, latency_ms Float64, source_topic String, source_partition Int32, source_offset UInt64) ENGINE = ReplacingMergeTree(source_offset) PARTITION BY toYYYYMMDD(toDateTime(intDiv(event_ts_ms, 1000))) ORDER BY (model, event_id)` });
    }
    const tasks: TaskId[] = Array.from({ length: 6 }, (_, p) => ({ group: 'bench', topic: 'predictions.fraud', partition: p }));
    const step = Math.ceil(sizes.sinkBatch / 3);
    // Rep 0 warms both up (the JIT, the server's caches) and is not counted.
    for (let rep = 0; rep <= sizes.repetitions; rep++) {
      await client.command({ query: `TRUNCATE TABLE ${db}.sink_ref` }).catch(() => undefined);
      let t = performance.now();
      await clickhouseClient(config, `INSERT INTO ${db}.sink_ref FORMAT JSONEachRow`, file, sizes.sinkBatch);
      reference.push(rows.length / ((performance.now() - t) / 1000));
      await client.command({ query: `TRUNCATE TABLE ${db}.sink_ours` }).catch(() => undefined);
      const sink = new ClickHouseSink(client, { database, flushRows: sizes.sinkBatch, lingerMs: 5 });
      t = performance.now();
      await Promise.all(
        tasks.map(async (task, k) => {
          for (let i = k * step; i < rows.length; i += tasks.length * step) {
            sink.add('sink_ours', rows.slice(i, Math.min(rows.length, i + step)), task);
            await sink.flush(task);
          }
        }),
      );
      await sink.close();
      ours.push(rows.length / ((performance.now() - t) / 1000));
      progress(`ledger sink ${rep === 0 ? 'warm-up' : `rep ${rep}`}: ours ${Math.round(ours.at(-1)!)} rows/s, clickhouse-client ${Math.round(reference.at(-1)!)} rows/s`);
      if (rep === 0) {
        ours.pop();
        reference.pop();
      }
    }
    const counts = await (await client.query({ query: `SELECT (SELECT count() FROM ${db}.sink_ours) AS ours, (SELECT count() FROM ${db}.sink_ref) AS ref`, format: 'JSONEachRow' })).json<{ ours: string; ref: string }>();
    if (Number(counts[0]!.ours) !== rows.length || Number(counts[0]!.ref) !== rows.length) throw new Error(`row counts differ: ours ${counts[0]!.ours}, clickhouse-client ${counts[0]!.ref}, expected ${rows.length}`);
  } finally {
    await client.command({ query: `DROP TABLE IF EXISTS ${db}.sink_ours` }).catch(() => undefined);
    await client.command({ query: `DROP TABLE IF EXISTS ${db}.sink_ref` }).catch(() => undefined);
    await client.close();
  }
  return { ours, reference };
}

/** A 20-rule set: deny and allow lists, 16 conditions on event fields and features, the thresholds, a cap. */
export const TWENTY_RULES = (() => {
  const conditions = Array.from({ length: 16 }, (_, i) => `  - {name: c${i}, kind: condition, when: 'event.type == "TRANSFER" && event.amount > ${100_000 + i * 1000}.0 && features.txn_count_1h != null && features.txn_count_1h > ${20 + i}.0', decision: review}`);
  return `model: fraud
rules:
  - {name: deny, kind: deny, match: {field: entity, values: [${Array.from({ length: 1000 }, (_, i) => `X${i}`).join(', ')}]}}
  - {name: allow, kind: allow, match: {field: event.counterparty_id, values: [M0]}}
${conditions.join('\n')}
  - {name: score, kind: threshold, thresholds: model, otherwise: allow}
  - {name: cap, kind: frequency_cap, decision: review, window: 1h, max: 3, otherwise: block}
`;
})();

/** Nanoseconds per decision: the 20-rule set vs the defaults, same inputs. */
export function ruleEvaluationPair(sizes: LedgerSizes): Pair {
  const twenty = compileRules(parseRuleSet(TWENTY_RULES), 'decision', 1);
  const defaults = MODEL_DEFAULT_RULES.current('fraud', 'decision');
  const entry = { thresholds: { block: 0.9, review: 0.5 } };
  const inputs = Array.from({ length: 1000 }, (_, i) => ({
    event: { event_id: `e${i}`, account_id: `C${i}`, counterparty_id: `M${i % 50}`, type: i % 3 === 0 ? 'TRANSFER' : 'PAYMENT', amount: 1000 + i * 37, old_balance: 5000, new_balance: 4000, channel: 'web', ts: i },
    entity: `C${i}`,
    features: { txn_count_1h: i % 40, amount_sum_24h: i * 10 },
    score: (i % 101) / 101,
  }));
  const run = (rules: typeof twenty): number => {
    let sink = 0;
    const t = process.hrtime.bigint();
    for (let n = 0; n < sizes.ruleEvaluations; n++) sink += rules.decide(inputs[n % inputs.length]!, entry).fired.length;
    const ns = Number(process.hrtime.bigint() - t) / sizes.ruleEvaluations;
    if (sink < 0) throw new Error('unreachable');
    return ns;
  };
  run(twenty);
  run(defaults);
  const ours: number[] = [];
  const reference: number[] = [];
  for (let rep = 0; rep < 5; rep++) {
    reference.push(run(defaults));
    ours.push(run(twenty));
  }
  return { ours, reference };
}

/** Milliseconds per frequency-cap check (one script call, as POST /v1/predict makes) vs PING, p50 and p99. */
export async function capCheckPair(config: FabricConfig, redisPrefix: string, sizes: LedgerSizes): Promise<{ p50: Pair; p99: Pair }> {
  const redis = new Redis(config.redisUrl);
  try {
    const caps = new FrequencyCaps(redis, `${redisPrefix}caps:`);
    const cap = [{ name: 'review-cap', windowMs: 3_600_000, max: 3 }];
    const ours: number[] = [];
    const reference: number[] = [];
    for (let i = 0; i < sizes.capChecks; i++) {
      let t = performance.now();
      await redis.ping();
      reference.push(performance.now() - t);
      t = performance.now();
      await caps.settleOne({ model: 'fraud', entity: `C${i % 500}`, member: `e${i}`, ts: 1_763_000_000_000 + i * 1000, caps: cap, candidates: ['review'], k: 1, maxPerGroup: 0 });
      ours.push(performance.now() - t);
    }
    const warm = Math.floor(sizes.capChecks / 10);
    const o = ours.slice(warm);
    const r = reference.slice(warm);
    return { p50: { ours: [quantile(o, 0.5)], reference: [quantile(r, 0.5)] }, p99: { ours: [quantile(o, 0.99)], reference: [quantile(r, 0.99)] } };
  } finally {
    redis.disconnect();
  }
}

