import type { Command } from 'commander';
import { prefixed, type FabricConfig } from '../../topology/config.js';
import { FabricError } from '../../topology/errors.js';
import { createKafka } from '../../topology/runtime/kafka.js';
import { createClickHouse } from '../../topology/runtime/clickhouse.js';
import { AvroSerde } from '../../schemas/serde.js';
import { FEATURE_GROUPS, featureGroupNamed } from '../../topology/features/groups.js';
import type { FeatureGroup } from '../../topology/features/definition.js';
import { featureTopic } from '../../topology/features/rows.js';
import { readLatestRow, readOnlineFeatures } from '../../serving/features/online.js';
import { loadHistory, offlineFeatures } from '../../processors/features/offline.js';
import { buildTrainingSet } from '../../processors/features/training-set.js';
import { backfill } from '../../processors/features/backfill.js';
import { checkFeatures } from '../../processors/features/check.js';
import { fabricTopology } from '../fabric-topology.js';
import { cliLog, config, connectRedis, instant, out, positiveInt, progressReporter } from './common.js';

function groupOf(name: string): FeatureGroup {
  const g = featureGroupNamed(name);
  if (!g) throw new FabricError('FABRIC_CLI_USAGE', `unknown feature group ${JSON.stringify(name)} (known: ${FEATURE_GROUPS.map((x) => x.name).join(', ')})`);
  return g;
}


/** The processor that keeps a group: its input topic and consumer group (from the topology). */
function groupProcessor(group: FeatureGroup): { input: string; consumerGroup: string; name: string } {
  const p = fabricTopology().processors.find((x) => x.outputs.includes(featureTopic(group)));
  if (!p) throw new FabricError('FABRIC_CONFIG_INVALID', `no processor writes ${featureTopic(group)}`);
  return { input: p.inputs[0]!, consumerGroup: p.group, name: p.name };
}

function lateness(cfg: FabricConfig, group: FeatureGroup): number {
  return group.latenessMs ?? cfg.featuresLatenessSec * 1000;
}

export function registerFeatureCommands(program: Command): void {
  const features = program.command('features').description('feature groups: online values, training sets, backfill and the online/offline check');

  features
    .command('list')
    .description('the feature groups and their features')
    .option('--json', 'print as JSON')
    .action((o: { json?: boolean }) => {
      const data = FEATURE_GROUPS.map((g) => ({ group: g.name, stream: g.stream, entity: g.entity, lateness_ms: g.latenessMs, features: g.features.map((f) => ({ name: f.name, kind: f.spec.kind, type: f.type, nullable: f.nullable, window_ms: f.windowMs })) }));
      out(!!o.json, data, () => FEATURE_GROUPS.map((g) => `${g.name} (${g.stream}, key ${g.entity}): ${g.featureNames.join(', ')}`).join('\n'));
    });

  features
    .command('get')
    .description('features of an entity as of an instant (default now): from Redis, or from ClickHouse for instants older than the online store keeps')
    .option('--group <group>', 'feature group', 'account')
    .option('--entity <id>', "entity id (the group's key, e.g. an account id)")
    .option('--account <id>', 'alias of --entity')
    .option('--at <instant>', 'ISO 8601 or epoch milliseconds (default: now)', instant('at'))
    .option('--json', 'print as JSON')
    .action(async (o: { group: string; entity?: string; account?: string; at?: number; json?: boolean }) => {
      const group = groupOf(o.group);
      if (o.entity !== undefined && o.account !== undefined && o.entity !== o.account) throw new FabricError('FABRIC_CLI_USAGE', '--entity and --account name different entities');
      const entity = o.entity ?? o.account;
      if (!entity) throw new FabricError('FABRIC_CLI_USAGE', '--entity <id> is required');
      const asOf = o.at ?? Date.now();
      const cfg = config();
      const redis = await connectRedis(cfg);
      try {
        const [online] = await readOnlineFeatures(redis, cfg.redisKeyPrefix, group, [entity], asOf);
        let values = online!.values;
        let source = 'online';
        if (!online!.exact) {
          // Older than the online store keeps: the same engine over the offline history.
          const ch = createClickHouse(cfg);
          try {
            const history = await loadHistory(ch, cfg.clickhouseDatabase, group, { entities: [entity] });
            values = offlineFeatures(group, history, entity, asOf);
            source = 'offline';
          } finally {
            await ch.close();
          }
        }
        const latest = await readLatestRow(redis, cfg.redisKeyPrefix, group, entity);
        const known = values !== null;
        const shown = values ?? Object.fromEntries(group.featureNames.map((n) => [n, null]));
        out(!!o.json, { group: group.name, entity, as_of: new Date(asOf).toISOString(), known, source, features: shown, latest_event: latest }, () =>
          [
            `${group.name} ${entity} as of ${new Date(asOf).toISOString()} (${source})${known ? '' : ': no events'}`,
            ...Object.entries(shown).map(([k, v]) => `${k.padEnd(36)} ${v === null ? 'null' : String(v)}`),
            ...(latest ? [`(latest event ${latest.event_id} at ${new Date(latest.ts).toISOString()})`] : []),
          ].join('\n'),
        );
      } finally {
        redis.disconnect();
      }
    });

  features
    .command('training-set')
    .description('point-in-time features for every label (entity key columns and ts), from the offline history')
    .requiredOption('--group <groups>', 'feature group(s), comma-separated')
    .requiredOption('--labels <file>', 'labels: .csv or .parquet with the groups\' entity key columns and ts (epoch ms or ISO 8601)')
    .requiredOption('--out <file>', 'output: .csv or .parquet')
    .option('--json', 'print the summary as JSON')
    .action(async (o: { group: string; labels: string; out: string; json?: boolean }) => {
      const groups = o.group.split(',').map((g) => groupOf(g.trim()));
      const cfg = config();
      const ch = createClickHouse(cfg);
      const progress = progressReporter('training-set');
      try {
        const report = await buildTrainingSet({ ch, database: cfg.clickhouseDatabase, groups, labels: o.labels, out: o.out, onProgress: (p) => progress({ ...p }, p.phase === 'done') });
        out(!!o.json, { out: o.out, ...report }, () => `wrote ${report.rows} rows (${report.columns.length} columns) to ${o.out}; history rows ${report.historyRows}; unknown entities ${JSON.stringify(report.unknownEntities)}; ${(report.seconds.labels + report.seconds.history + report.seconds.features).toFixed(2)} s`);
      } finally {
        await ch.close();
      }
    });

  features
    .command('backfill')
    .description("recompute a group's offline history (and with --online its Redis state) from its input topic; idempotent")
    .requiredOption('--group <group>', 'feature group')
    .option('--from <instant>', 'first event time to write (ISO 8601 or epoch ms; default: the beginning)', instant('from'))
    .option('--to <instant>', 'last event time to write (default: now)', instant('to'))
    .option('--online', "also rewrite the Redis state (the group's processor must be stopped)")
    .option('--json', 'print the summary as JSON')
    .action(async (o: { group: string; from?: number; to?: number; online?: boolean; json?: boolean }) => {
      const group = groupOf(o.group);
      const cfg = config();
      const from = o.from ?? 0;
      const to = o.to ?? Date.now();
      if (from > to) throw new FabricError('FABRIC_CLI_USAGE', '--from is after --to');
      const kafka = createKafka(cfg, cliLog(cfg, true), 'cli');
      const proc = groupProcessor(group);
      if (o.online) {
        const admin = kafka.admin();
        await admin.connect();
        try {
          const { groups } = await admin.describeGroups([prefixed(cfg, proc.consumerGroup)]);
          const members = groups[0]?.members.length ?? 0;
          if (members > 0) throw new FabricError('FABRIC_CLI_USAGE', `processor ${proc.name} is running (${members} member(s) in ${prefixed(cfg, proc.consumerGroup)}): stop it before backfill --online, which rewrites its Redis state`);
        } finally {
          await admin.disconnect();
        }
      }
      const ch = createClickHouse(cfg);
      const redis = o.online ? await connectRedis(cfg) : null;
      const progress = progressReporter('backfill');
      try {
        const report = await backfill({
          kafka,
          serde: new AvroSerde({ url: cfg.registryUrl }),
          group,
          topic: { logical: proc.input, physical: prefixed(cfg, proc.input) },
          latenessMs: lateness(cfg, group),
          maxClockSkewMs: cfg.maxClockSkewSec * 1000,
          from,
          to,
          clickhouse: { client: ch, database: cfg.clickhouseDatabase },
          ...(redis ? { online: { redis, keyPrefix: cfg.redisKeyPrefix } } : {}),
          onProgress: (p) => progress(p),
        });
        progress({ phase: 'done', done: report.records, total: report.records }, true);
        out(!!o.json, { group: group.name, from: new Date(from).toISOString(), to: new Date(to).toISOString(), ...report }, () => `${group.name}: read ${report.records} records (admitted ${report.admitted}, late ${report.late}, duplicates ${report.duplicates}, invalid ${report.invalid}); wrote ${report.rowsWritten} rows${redis ? ` and ${report.entitiesWritten} entities online` : ''}`);
      } finally {
        await ch.close();
        redis?.disconnect();
      }
    });

  features
    .command('check')
    .description('compare online values with offline values at the same instant for sampled entities; exits 1 on any mismatch')
    .requiredOption('--group <group>', 'feature group')
    .option('--sample <n>', 'entities to sample', positiveInt('sample'), 100)
    .option('--at <instant>', 'the instant to compare at (default: now)', instant('at'))
    .option('--seed <k>', 'sampling seed', (v) => Number.parseInt(v, 10), 1)
    .option('--wait <sec>', 'how long to wait for the offline store to catch up with the online one', positiveInt('wait'), 30)
    .option('--json', 'print the report as JSON')
    .action(async (o: { group: string; sample: number; at?: number; seed: number; wait: number; json?: boolean }) => {
      const group = groupOf(o.group);
      const cfg = config();
      const redis = await connectRedis(cfg);
      const ch = createClickHouse(cfg);
      try {
        const report = await checkFeatures({ redis, keyPrefix: cfg.redisKeyPrefix, ch, database: cfg.clickhouseDatabase, group, sample: Math.floor(o.sample), asOf: o.at ?? Date.now(), seed: o.seed, waitMs: o.wait * 1000 });
        out(!!o.json, report, () =>
          [
            `${group.name} at ${report.as_of}: ${report.checked} entities checked, ${report.mismatches} mismatch(es), ${report.skipped} skipped (older than the online store keeps)`,
            ...report.differences.slice(0, 10).map((d) => `  ${d.entity} ${d.what} ${d.feature}: online ${JSON.stringify(d.online)} offline ${JSON.stringify(d.offline)}`),
          ].join('\n'),
        );
        if (report.mismatches > 0) process.exitCode = 1;
      } finally {
        redis.disconnect();
        await ch.close();
      }
    });
}
