import { Command, Option } from 'commander';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { createLogger } from '../../topology/runtime/log.js';
import { FabricError, messageOf } from '../../topology/errors.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { createClickHouse, sqlLiteral } from '../../topology/runtime/clickhouse.js';
import { BatchingProducer } from '../../topology/runtime/producer.js';
import { fabricTopology } from '../fabric-topology.js';
import { applyTopology, dropPartitions, listPartitions } from '../../topology/apply.js';
import { planRetention } from '../../topology/retention.js';
import { DLQ_HEADERS } from '../../topology/runtime/dlq.js';
import { startFabric } from '../fabric.js';
import { readStatuses, type PublishedStatus } from '../processor-status.js';
import { readUntilIdle, type ReadRecord } from '../../topology/runtime/topic-reader.js';
import { consumerLag } from '../../topology/runtime/lag.js';
import { AvroSerde } from '../../schemas/serde.js';
import { loadAvroSchema } from '../../schemas/catalog.js';
import type { EntityMetadata, Outcome } from '../../schemas/types.generated.js';
import { metadataKey } from '../../topology/metadata.js';
import { stackDown, stackStatus, stackUp, type ComponentName } from '../../deploy/stack.js';
import { runSimulation } from '../../sim/run.js';
import { CATALOGUE_UPDATED_AT } from '../../sim/interactions.js';
import { cliLog, config, connectRedis, out, positiveInt } from './common.js';
import { registerFeatureCommands } from './features.js';
import { registerModelCommands } from './models.js';
import { registerRuleCommands } from './rules.js';
import { registerExperimentCommands } from './experiments.js';
import { registerMonitorCommands } from './monitor.js';

const program = new Command('fabric')
  .description('Real-time data and inference fabric: events over HTTP/WS into Kafka, features, ONNX scoring, rules, tracking and drift.')
  .exitOverride();

const stack = program.command('stack').description('the local stack (Kafka, schema registry, Redis, ClickHouse) under FABRIC_STACK_DIR');
const COMPONENT_NAMES: readonly ComponentName[] = ['kafka', 'registry', 'redis', 'clickhouse'];
function components(list: string | undefined): ComponentName[] | undefined {
  if (!list) return undefined;
  const names = list.split(',').map((s) => s.trim());
  for (const n of names) if (!COMPONENT_NAMES.includes(n as ComponentName)) throw new FabricError('FABRIC_CLI_USAGE', `--only takes ${COMPONENT_NAMES.join(', ')}; got ${JSON.stringify(n)}`);
  return names as ComponentName[];
}
stack.command('up').description('install what is missing and start every component; idempotent').option('--only <components>', `start only these (${COMPONENT_NAMES.join(',')})`).option('--json', 'print status as JSON').action(async (o: { json?: boolean; only?: string }) => {
  const status = await stackUp(config(), (line) => process.stderr.write(`${line}\n`), components(o.only));
  out(!!o.json, status, () => status.map((s) => `${s.name.padEnd(11)} ${s.up ? 'up  ' : 'down'} ${s.address}`).join('\n'));
});
stack.command('down').description('stop every component (data is kept)').option('--only <components>', `stop only these (${COMPONENT_NAMES.join(',')})`).action(async (o: { only?: string }) => {
  await stackDown(config(), (line) => process.stderr.write(`${line}\n`), components(o.only));
});
stack.command('status').description('each component up/down with its address').option('--json', 'print as JSON').action(async (o: { json?: boolean }) => {
  const status = await stackStatus(config());
  out(!!o.json, status, () => status.map((s) => `${s.name.padEnd(11)} ${s.up ? 'up  ' : 'down'} ${s.address}${s.pid ? ` (pid ${s.pid})` : ''}${s.detail ? `  ${s.detail}` : ''}`).join('\n'));
  if (status.some((s) => !s.up)) process.exitCode = 1;
});

const retention = program.command('retention').description('ClickHouse retention: drop the day partitions older than each table\'s retention (FABRIC_CLICKHOUSE_RETENTION)');
retention
  .command('apply')
  .description('print the partitions older than their table\'s retention, then drop them (--dry-run: print only)')
  .option('--dry-run', 'drop nothing')
  .option('--json', 'print as JSON')
  .action(async (o: { dryRun?: boolean; json?: boolean }) => {
    const cfg = config();
    const client = createClickHouse(cfg);
    try {
      const drops = planRetention(cfg.clickhouseRetention, await listPartitions(client, cfg.clickhouseDatabase), Date.now());
      const plan = drops.map((d) => `${cfg.clickhouseDatabase}.${d.table} partition ${d.partition}: ${d.rows} rows, older than ${d.days} days (${d.rule}; keeping from ${d.keepFrom})`);
      if (!o.json) process.stderr.write(plan.length ? `${plan.join('\n')}\n` : 'nothing older than its retention\n');
      if (!o.dryRun) await dropPartitions(client, cfg.clickhouseDatabase, drops);
      out(!!o.json, { dryRun: !!o.dryRun, dropped: o.dryRun ? [] : drops, planned: drops }, () => `${o.dryRun ? 'dry run: would drop' : 'dropped'} ${drops.length} partition${drops.length === 1 ? '' : 's'}, ${drops.reduce((n, d) => n + d.rows, 0)} rows`);
    } finally {
      await client.close();
    }
  });

const topologyCmd = program.command('topology').description('the declarative graph of streams, topics and processors');
topologyCmd.command('describe').description('print the graph').option('--json', 'print as JSON').action((o: { json?: boolean }) => {
  const t = fabricTopology();
  out(!!o.json, { streams: t.streams, topics: t.topics, processors: t.processors }, () => t.describe());
});
topologyCmd.command('apply').description('create topics, register schemas (BACKWARD), apply the ClickHouse DDL; idempotent').option('--json', 'print as JSON').action(async (o: { json?: boolean }) => {
  const cfg = config();
  const log = cliLog(cfg, true);
  const report = await applyTopology(fabricTopology(), cfg, createKafka(cfg, log, 'cli'), new AvroSerde({ url: cfg.registryUrl }));
  out(!!o.json, report, () => `topics created: ${report.topicsCreated.length}, existing: ${report.topicsExisting.length}; subjects: ${report.subjects.map((s) => `${s.subject}#${s.id}`).join(', ')}; ClickHouse statements: ${report.clickhouseStatements}${report.notices.map((n) => `\nnotice: ${n}`).join('')}`);
});

program
  .command('run')
  .description('stack up, topology applied, demo model registered, gateway and every processor running; Ctrl-C stops cleanly')
  .option('--processors <names>', 'comma-separated processors to run (default: all)')
  .option('--no-gateway', 'do not start the gateway')
  .option('--no-stack', 'do not start the local stack (use FABRIC_* addresses as they are)')
  .action(async (o: { processors?: string; gateway: boolean; stack: boolean }) => {
    const cfg = config();
    const log = createLogger(cfg, { service: 'fabric' });
    if (o.stack) {
      const status = await stackUp(cfg, (line) => log.info(line));
      log.info({ stack: status.map((s) => `${s.name}=${s.address}`) }, 'stack up');
    }
    const fabric = await startFabric(cfg, log, { gateway: o.gateway, ...(o.processors ? { processors: o.processors.split(',').map((s) => s.trim()) } : {}) });
    log.info({ gateway: fabric.gatewayPort, models: fabric.models() }, 'fabric running; Ctrl-C to stop');
    await new Promise<void>((resolve) => {
      let stopping = false;
      const onSignal = (signal: string): void => {
        if (stopping) {
          log.warn('second signal: exiting now');
          process.exit(130);
        }
        stopping = true;
        log.info({ signal }, 'stopping: draining gateway, finishing batches, flushing sinks, committing');
        fabric.stop().then(resolve, (err: unknown) => {
          log.error({ err: messageOf(err) }, 'stop failed');
          resolve();
        });
      };
      process.once('SIGINT', () => onSignal('SIGINT'));
      process.once('SIGTERM', () => onSignal('SIGTERM'));
      // A processor that spent its restart budget: stop cleanly, then exit non-zero so a supervisor restarts us.
      void fabric.fatal.then((err) => {
        if (stopping) return;
        stopping = true;
        process.exitCode = 1;
        log.fatal({ err: messageOf(err) }, 'stopping: a processor failed for good');
        fabric.stop().then(resolve, () => resolve());
      });
    });
    log.info('fabric stopped');
  });

program
  .command('simulate')
  .description('stream PaySim-like transactions (or interactions) through the gateway in real time; labels follow as outcomes')
  .addOption(new Option('--stream <name>', 'stream').choices(['transactions', 'interactions']).default('transactions'))
  .requiredOption('--rate <n>', 'events per second', positiveInt('rate'))
  .requiredOption('--duration <sec>', 'seconds to run', positiveInt('duration'))
  .option('--history <duration>', 'first send this much past event time (e.g. 24h, 90m, 3600s, 1d) as fast as the gateway takes it, so windows are warm', (v: string): number => {
    const m = /^(\d+(?:\.\d+)?)([smhd])$/.exec(v.trim());
    if (!m) throw new FabricError('FABRIC_CLI_USAGE', `--history takes a duration such as 24h, 90m, 3600s or 1d; got ${JSON.stringify(v)}`);
    return Math.round(Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd']);
  }, 0)
  .option('--seed <k>', 'random seed', (v) => Number.parseInt(v, 10), 1)
  .option('--drift', 'shift the distributions (exercises drift detection)', false)
  .option('--run-id <id>', 'event id prefix (default: derived from the start time)')
  .option('--gateway <url>', 'gateway base URL (default http://127.0.0.1:FABRIC_GATEWAY_PORT)')
  .option('--api-key <key>', 'API key (default: the first of FABRIC_GATEWAY_API_KEYS)')
  .option('--outcome-delay <ms>', 'delay before labels are published', (v) => Number.parseInt(v, 10), 5000)
  .option('--no-outcomes', 'do not publish labels')
  .option('--no-catalogue', 'interactions: do not publish the item catalogue to _fabric.metadata')
  .option('--json', 'print the summary as JSON (with accepted event ids)')
  .action(async (o: { stream: 'transactions' | 'interactions'; rate: number; duration: number; history: number; seed: number; drift: boolean; runId?: string; gateway?: string; apiKey?: string; outcomeDelay: number; outcomes: boolean; catalogue: boolean; json?: boolean }) => {
    const cfg = config();
    const log = cliLog(cfg, true);
    if (!Number.isInteger(o.seed)) throw new FabricError('FABRIC_CLI_USAGE', '--seed must be an integer');
    let producer: BatchingProducer | null = null;
    let publishOutcomes: ((outcomes: Outcome[]) => Promise<void>) | undefined;
    let publishCatalogue: ((items: { id: string; attributes: Record<string, string | number | boolean> }[]) => Promise<void>) | undefined;
    const outcomesTopic = fabricTopology().stream(o.stream)?.outcomesTopic;
    const withCatalogue = o.stream === 'interactions' && o.catalogue;
    if ((o.outcomes && outcomesTopic) || withCatalogue) {
      const serde = new AvroSerde({ url: cfg.registryUrl });
      const p = new BatchingProducer(createKafka(cfg, log, 'simulate'), { lingerMs: 5, batchSize: 1000, maxQueued: 100_000, ackTimeoutMs: cfg.kafkaAckTimeoutMs }, log);
      if (!(await p.start())) throw new FabricError('FABRIC_KAFKA_UNAVAILABLE', `Kafka is not reachable at ${cfg.kafkaBrokers} (needed for outcomes and the catalogue; --no-outcomes --no-catalogue skip them)`);
      producer = p;
      if (o.outcomes && outcomesTopic) {
        const topic = prefixed(cfg, outcomesTopic);
        const writer = await serde.writer<Outcome>(`${topic}-value`, loadAvroSchema('outcome'));
        publishOutcomes = (outcomes) => p.send(outcomes.map((x) => ({ topic, key: x.entity_id, value: writer.encode(x) })));
      }
      if (withCatalogue) {
        // The catalogue goes to _fabric.metadata like any metadata source's records (same records for a seed).
        const topic = prefixed(cfg, '_fabric.metadata');
        const writer = await serde.writer<EntityMetadata>(`${topic}-value`, loadAvroSchema('metadata'));
        publishCatalogue = (items) => p.send(items.map((i) => ({ topic, key: metadataKey('item', i.id), value: writer.encode({ kind: 'item', id: i.id, attributes: i.attributes, updated_at: CATALOGUE_UPDATED_AT, source: 'fabric simulate' }) })));
      }
    }
    // Progress on stderr (stdout is the summary's): one updated line on a TTY, else a JSON line every ~2 s.
    const total = Math.round(o.rate * (o.history / 1000 + o.duration));
    const tty = !!process.stderr.isTTY;
    let progressLine = false;
    let last = { at: Date.now(), accepted: 0 };
    const onProgress = (s: { sent: number; history: number; accepted: number }): void => {
      const now = Date.now();
      if (now - last.at < (tty ? 250 : 2000)) return;
      const ratePerSec = Math.round(((s.accepted - last.accepted) * 1000) / (now - last.at));
      last = { at: now, accepted: s.accepted };
      if (tty) {
        process.stderr.write(`\r\x1b[Ksimulate: sent ${s.sent}/${total} (history ${s.history}), accepted ${s.accepted}, ${ratePerSec}/s`);
        progressLine = true;
      } else {
        process.stderr.write(`${JSON.stringify({ progress: { sent: s.sent, total, history: s.history, accepted: s.accepted, ratePerSec } })}\n`);
      }
    };
    try {
      const summary = await runSimulation({
        stream: o.stream,
        gatewayUrl: o.gateway ?? `http://127.0.0.1:${cfg.gatewayPort}`,
        apiKey: o.apiKey ?? cfg.gatewayApiKeys.split(',')[0]!.split(':')[0]!,
        ratePerSec: o.rate,
        durationSec: o.duration,
        seed: o.seed,
        drift: o.drift,
        runId: o.runId ?? `r${Date.now().toString(36)}`,
        outcomeDelayMs: o.outcomeDelay,
        historyMs: o.history,
        onProgress,
        ...(publishOutcomes ? { publishOutcomes } : {}),
        ...(publishCatalogue ? { publishCatalogue } : {}),
      });
      if (progressLine) process.stderr.write('\n');
      progressLine = false;
      const { acceptedIds, ...counts } = summary;
      out(!!o.json, { ...counts, acceptedIds }, () => `sent ${counts.sent} (history ${counts.history}), accepted ${counts.accepted}, rejected ${counts.rejected}, failed requests ${counts.failedRequests}, fraud ${counts.fraud}, outcomes ${counts.outcomes}${counts.catalogue ? `, catalogue ${counts.catalogue} items` : ''}${counts.errors.length ? `\nerrors: ${counts.errors.slice(0, 5).join(' | ')}` : ''}`);
      if (counts.accepted < counts.sent) process.exitCode = 1;
    } finally {
      if (progressLine) process.stderr.write('\n');
      await producer?.close();
    }
  });

registerModelCommands(program);
registerRuleCommands(program);
registerExperimentCommands(program);
registerMonitorCommands(program);

function readTopic(cfg: FabricConfig, physical: string, max: number, fromBeginning: boolean, onRecord: (r: ReadRecord) => Promise<void>, idleMs = 3000): Promise<number> {
  return readUntilIdle(createKafka(cfg, cliLog(cfg, true), 'cli'), physical, { groupPrefix: prefixed(cfg, 'fabric.cli'), fromBeginning, max, idleMs, onRecord });
}

program
  .command('tail')
  .description('print decoded records of a topic (logical name); stops after --max records or when idle')
  .argument('<topic>', 'logical topic, e.g. predictions.fraud')
  .option('--max <n>', 'records to print', positiveInt('max'), 20)
  .option('--from-beginning', 'start at the earliest offset', false)
  .option('--json', 'one JSON object per line')
  .action(async (topic: string, o: { max: number; fromBeginning: boolean; json?: boolean }) => {
    const cfg = config();
    const serde = new AvroSerde({ url: cfg.registryUrl });
    await readTopic(cfg, prefixed(cfg, topic), o.max, o.fromBeginning, async (m) => {
      let value: unknown = null;
      if (m.value) value = await serde.decodeAsync(m.value).catch(() => m.value!.toString('utf8'));
      // fabric.* headers carry why a record is where it is (late.<stream>: the group and the reason).
      const why = Object.fromEntries(Object.entries(m.headers).filter(([k]) => k.startsWith('fabric.')));
      const shown = Object.keys(why).length ? { partition: m.partition, offset: m.offset, key: m.key, value, headers: why } : { partition: m.partition, offset: m.offset, key: m.key, value };
      out(!!o.json, shown, () => `${topic}[${m.partition}]@${m.offset} ${m.key ?? ''} ${JSON.stringify(value)}${Object.keys(why).length ? ` ${JSON.stringify(why)}` : ''}`);
    });
  });

program
  .command('dlq')
  .description('dead-lettered records of a source topic with their error headers')
  .argument('<topic>', 'logical source topic, e.g. events.transactions')
  .option('--max <n>', 'records to print', positiveInt('max'), 20)
  .option('--json', 'one JSON object per line')
  .action(async (topic: string, o: { max: number; json?: boolean }) => {
    const cfg = config();
    const n = await readTopic(cfg, prefixed(cfg, `dlq.${topic}`), o.max, true, async (m) => {
      const rec = { offset: m.offset, code: m.headers[DLQ_HEADERS.code], reason: m.headers[DLQ_HEADERS.message], source: `${m.headers[DLQ_HEADERS.topic]}[${m.headers[DLQ_HEADERS.partition]}]@${m.headers[DLQ_HEADERS.offset]}`, processor: m.headers[DLQ_HEADERS.processor], bytes: m.value?.length ?? 0 };
      out(!!o.json, rec, () => `${rec.source} ${rec.processor} ${rec.code}: ${rec.reason}`);
    }, 2000);
    if (n === 0 && !o.json) process.stdout.write('(empty)\n');
  });

program
  .command('offsets')
  .description('committed offsets and lag of every processor group')
  .option('--json', 'print as JSON')
  .action(async (o: { json?: boolean }) => {
    const cfg = config();
    const admin = createKafka(cfg, cliLog(cfg, true), 'cli').admin();
    await admin.connect();
    try {
      const rows = await consumerLag(admin, cfg, fabricTopology().processors);
      out(!!o.json, rows, () => rows.map((r) => `${r.processor.padEnd(9)} ${`${r.topic}[${r.partition}]`.padEnd(28)} committed ${r.committed.padStart(8)} end ${r.end.padStart(8)} lag ${r.lag}`).join('\n'));
    } finally {
      await admin.disconnect();
    }
  });

program
  .command('status')
  .description('stack components, and the state of every running processor instance (running, paused, restarting, failed)')
  .option('--json', 'print as JSON')
  .action(async (o: { json?: boolean }) => {
    const cfg = config();
    const stack = await stackStatus(cfg);
    let processors: PublishedStatus[] = [];
    if (stack.find((s) => s.name === 'redis')?.up) {
      const redis = await connectRedis(cfg);
      try {
        processors = await readStatuses(redis, cfg.redisKeyPrefix);
      } finally {
        redis.disconnect();
      }
    }
    // Events routed beyond a feature group's lateness: each late topic's offset span (retention 30 d;
    // an upper bound, as transactional writes add one commit marker per batch and partition).
    const late: Record<string, number> = {};
    if (stack.find((s) => s.name === 'kafka')?.up) {
      const admin = createKafka(cfg, cliLog(cfg, true), 'cli').admin();
      await admin.connect();
      try {
        const existing = new Set(await admin.listTopics());
        for (const s of fabricTopology().streams) {
          const topic = prefixed(cfg, s.lateTopic);
          if (existing.has(topic)) late[s.lateTopic] = (await admin.fetchTopicOffsets(topic)).reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
        }
      } finally {
        await admin.disconnect();
      }
    }
    out(!!o.json, { stack, processors, late }, () =>
      [
        ...stack.map((s) => `${s.name.padEnd(11)} ${s.up ? 'up  ' : 'down'} ${s.address}`),
        ...(processors.length ? processors.map((p) => `${p.processor.padEnd(11)} ${p.state.padEnd(10)} ${p.instance} restarts ${p.restarts}${p.paused.length ? ` paused ${p.paused.join(',')}` : ''}${p.lastError && p.state !== 'running' ? `  ${p.lastError}` : ''}`) : ['(no processor running)']),
        ...Object.entries(late).map(([topic, n]) => `${topic.padEnd(22)} at most ${n} event(s) beyond the allowed lateness (fabric tail ${topic} shows each with its reason)`),
      ].join('\n'),
    );
    if (stack.some((s) => !s.up) || processors.some((p) => p.state === 'failed' || p.state === 'restarting')) process.exitCode = 1;
  });

registerFeatureCommands(program);

const drift = program.command('drift').description('drift metrics');
drift.command('report').description('latest drift windows from ClickHouse: per version and variable, PSI, KS, Wasserstein, missing rate and status').option('--model <name>', 'model', 'fraud').option('--limit <n>', 'rows', positiveInt('limit'), 40).option('--json', 'print as JSON').action(async (o: { model: string; limit: number; json?: boolean }) => {
  const cfg = config();
  const ch = createClickHouse(cfg);
  try {
    const rs = await ch.query({ query: `SELECT version, variable, window_start_ms, window_end_ms, count, psi, js, ks, wasserstein, chi2_p, missing_rate, out_of_range_rate, status, final FROM ${cfg.clickhouseDatabase}.v_drift_metrics WHERE model = ${sqlLiteral(o.model)} ORDER BY window_end_ms DESC, version, variable LIMIT ${Math.floor(o.limit)}`, format: 'JSONEachRow' });
    const rows = await rs.json<{ version: string; variable: string; window_start_ms: string; window_end_ms: string; count: string; psi: number; ks: number | null; wasserstein: number | null; missing_rate: number; status: string; final: number }>();
    const n = (x: number | null, d = 4): string => (x === null ? '-' : x.toFixed(d));
    out(!!o.json, rows, () => rows.map((r) => `${new Date(Number(r.window_start_ms)).toISOString()} ${r.version.padEnd(8)} ${r.variable.padEnd(28)} n=${String(r.count).padEnd(6)} psi=${n(r.psi)} ks=${n(r.ks)} w=${n(r.wasserstein, 3)} missing=${n(r.missing_rate, 3)} ${r.status}${r.final ? '' : ' (early: not every partition has passed the window yet)'}`).join('\n') || '(no windows yet)');
  } finally {
    await ch.close();
  }
});

try {
  await program.parseAsync(process.argv);
  // Client libraries keep sockets and timers alive; a finished command exits.
  process.exit(process.exitCode ?? 0);
} catch (err) {
  const code = (err as { code?: string }).code;
  if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') process.exit(0);
  if (typeof code === 'string' && code.startsWith('commander.')) process.exit(2);
  process.stderr.write(`fabric: ${err instanceof FabricError ? `${err.code}: ` : ''}${messageOf(err).split('\n')[0]}\n`);
  process.exit(1);
}
