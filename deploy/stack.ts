/**
 * Local stack launcher behind `fabric stack up|down|status`: Kafka (KRaft, one node), Apicurio Registry (its
 * Confluent-compatible API), Redis and ClickHouse, run as plain background processes under `config.stackDir`
 * (no containers). Like `docker compose up -d`, the services outlive the CLI: they are spawned detached, log to
 * `<stackDir>/logs/<name>.log` and are tracked by `<stackDir>/run/<name>.pid`. Data stays under the stack folder
 * across `down`/`up`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kafka, logLevel } from 'kafkajs';
import { Redis } from 'ioredis';
import type { FabricConfig } from '../topology/config.js';
import { FabricError, isFabricError, messageOf } from '../topology/errors.js';

export type ComponentName = 'kafka' | 'registry' | 'redis' | 'clickhouse';

export interface ComponentStatus {
  name: ComponentName;
  up: boolean;
  address: string;
  pid: number | null;
  detail: string;
}

const KAFKA_START_TIMEOUT_MS = 60_000;
const REGISTRY_START_TIMEOUT_MS = 120_000;
const DEFAULT_START_TIMEOUT_MS = 30_000;
const PROBE_TIMEOUT_MS = 2_000;
const POLL_INTERVAL_MS = 500;
const STOP_GRACE_MS = 20_000;
const LOG_TAIL_LINES = 30;
/** A log is set aside (one generation kept) when a start finds it larger than this, so it cannot grow forever. */
const LOG_ROTATE_BYTES = 20 * 1024 * 1024;

/** Debian packages installed when one of their binaries is missing (kcat and clickhouse-client are the benchmarks' reference tools). */
const APT_PACKAGES = ['redis-server', 'clickhouse-server', 'clickhouse-client', 'kcat'] as const;

const REGISTRY_VERSION = '3.0.9';
const REGISTRY_ZIP = `apicurio-registry-app-${REGISTRY_VERSION}-all.zip`;
const REGISTRY_JAR = `apicurio-registry-app-${REGISTRY_VERSION}-runner.jar`;
const REGISTRY_API_PATH = '/apis/ccompat/v7';

/** Written last by a fetch, so an interrupted download is retried instead of being mistaken for a complete one. */
const FETCHED_MARKER = '.fetched';

// ---------------------------------------------------------------------------------------------------------------
// Layout

interface StackPaths {
  readonly root: string;
  readonly logs: string;
  readonly run: string;
  readonly kafka: string;
  readonly kafkaLibs: string;
  readonly kafkaData: string;
  readonly registry: string;
  readonly registryApp: string;
  readonly registryData: string;
  readonly redis: string;
  readonly clickhouse: string;
}

function stackPaths(config: FabricConfig): StackPaths {
  const root = resolve(process.cwd(), config.stackDir);
  return {
    root,
    logs: join(root, 'logs'),
    run: join(root, 'run'),
    kafka: join(root, 'kafka'),
    kafkaLibs: join(root, 'kafka', 'libs'),
    kafkaData: join(root, 'kafka', 'data'),
    registry: join(root, 'registry'),
    registryApp: join(root, 'registry', 'app'),
    registryData: join(root, 'registry', 'data'),
    redis: join(root, 'redis'),
    clickhouse: join(root, 'clickhouse'),
  };
}

const logFileOf = (paths: StackPaths, name: ComponentName): string => join(paths.logs, `${name}.log`);
const pidFileOf = (paths: StackPaths, name: ComponentName): string => join(paths.run, `${name}.pid`);

/**
 * The repository's `deploy` folder (poms and config templates). Searched upwards from this module because the
 * module also runs compiled from `dist/deploy`, where the non-TypeScript files are not copied.
 */
async function findDeployDir(): Promise<string> {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    for (const candidate of [dir, join(dir, 'deploy')]) {
      if (await exists(join(candidate, 'kafka', 'pom.xml'))) return candidate;
    }
    if (dirname(dir) === dir) throw new FabricError('FABRIC_STACK_FAILED', 'cannot find the deploy/ folder (deploy/kafka/pom.xml) above the stack module');
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Small process and file helpers

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

function lastLines(text: string, count: number): string {
  return text.replace(/\n+$/, '').split('\n').slice(-count).join('\n');
}

interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  /** stdout and stderr interleaved, capped to the end: what a failure report should quote. */
  readonly output: string;
}

const OUTPUT_CAP = 64 * 1024;

/** Runs a short-lived command to completion, capturing its output. */
function run(command: string, args: readonly string[], cwd?: string): Promise<RunResult> {
  return new Promise((settle, reject) => {
    const child = spawn(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout = (stdout + chunk.toString()).slice(-OUTPUT_CAP);
      output = (output + chunk.toString()).slice(-OUTPUT_CAP);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-OUTPUT_CAP);
    });
    child.once('error', reject);
    child.once('close', (code) => settle({ code, stdout, output }));
  });
}

/** Runs a preparation step; a failure names the component and quotes the command's output. */
async function mustRun(label: string, what: string, command: string, args: readonly string[], cwd?: string): Promise<RunResult> {
  let result: RunResult;
  try {
    result = await run(command, args, cwd);
  } catch (err) {
    throw new FabricError('FABRIC_STACK_FAILED', `${label}: ${what} failed: cannot run ${command}: ${messageOf(err)}`, { cause: err });
  }
  if (result.code !== 0) {
    throw new FabricError('FABRIC_STACK_FAILED', `${label}: ${what} failed (${command} exited with ${String(result.code)}); last output:\n${lastLines(result.output, LOG_TAIL_LINES)}`);
  }
  return result;
}

/**
 * Full path of an executable, or null. Asks the shell so that the inherited PATH applies without this module
 * reading the environment; Debian puts some daemons (clickhouse-server) in sbin folders that a non-root PATH lacks.
 */
async function findExecutable(name: string): Promise<string | null> {
  const script = 'command -v "$1" && exit 0; for d in /usr/local/sbin /usr/sbin /sbin; do [ -x "$d/$1" ] && echo "$d/$1" && exit 0; done; exit 1';
  const result = await run('sh', ['-c', script, 'sh', name]).catch(() => null);
  if (result?.code !== 0) return null;
  return result.stdout.trim().split('\n')[0] ?? null;
}

async function requireExecutable(name: ComponentName, executable: string, hint: string): Promise<string> {
  const path = await findExecutable(executable);
  if (path === null) throw new FabricError('FABRIC_STACK_FAILED', `${name}: \`${executable}\` is not installed (${hint})`);
  return path;
}

/** The last lines of a log without reading a large file whole. */
async function logTail(file: string, count = LOG_TAIL_LINES): Promise<string> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch {
    return '(no log file)';
  }
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, OUTPUT_CAP);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    return lastLines(buffer.toString('utf8'), count);
  } finally {
    await handle.close();
  }
}

/** Bounds a promise whose library has no reliable timeout of its own (kafkajs connects, ioredis commands). */
async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Pid files

type PidState = { readonly kind: 'none' } | { readonly kind: 'stale'; readonly pid: number } | { readonly kind: 'alive'; readonly pid: number };

/**
 * Whether `pid` is still the process we started. The command-line check guards against pid reuse after a reboot
 * or a crash: a recycled pid must neither be reported as ours nor be signalled by `down`. A zombie has an empty
 * command line and counts as gone.
 */
async function isOurProcess(pid: number, signature: readonly string[]): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replaceAll('\0', ' ');
    return signature.every((part) => cmdline.includes(part));
  } catch {
    // No procfs (not Linux): the signal check above is all there is.
    return true;
  }
}

async function readPidState(paths: StackPaths, component: Component, config: FabricConfig): Promise<PidState> {
  let text: string;
  try {
    text = await readFile(pidFileOf(paths, component.name), 'utf8');
  } catch {
    return { kind: 'none' };
  }
  const pid = Number.parseInt(text.trim(), 10);
  if (!Number.isInteger(pid) || pid <= 0) return { kind: 'stale', pid: 0 };
  return (await isOurProcess(pid, component.signature(paths, config))) ? { kind: 'alive', pid } : { kind: 'stale', pid };
}

// ---------------------------------------------------------------------------------------------------------------
// Components

interface Launch {
  readonly command: string;
  readonly args: readonly string[];
  readonly cwd: string;
}

/** State shared by the components of one `stackUp` call. */
interface UpContext {
  readonly config: FabricConfig;
  readonly paths: StackPaths;
  readonly deployDir: string;
  readonly log: (line: string) => void;
  /** One apt-get run for every component that needs a Debian package. */
  packages: Promise<void> | undefined;
  /** Maven runs one at a time: concurrent runs sharing a fresh local repository can corrupt its downloads. */
  mavenQueue: Promise<unknown>;
}

interface Component {
  readonly name: ComponentName;
  readonly startTimeoutMs: number;
  address(config: FabricConfig): string;
  /** Texts that all appear in the command line of our instance of this stack (see isOurProcess). */
  signature(paths: StackPaths, config: FabricConfig): readonly string[];
  /** Resolves with a short description when healthy; rejects otherwise. */
  probe(config: FabricConfig, timeoutMs: number): Promise<string>;
  /** Installs, fetches and renders whatever is missing; returns how to start the process. */
  prepare(ctx: UpContext): Promise<Launch>;
  /** Brings the configuration of a component already running up to date (what it reloads by itself). */
  refresh?(ctx: UpContext): Promise<void>;
}

function ensurePackages(ctx: UpContext): Promise<void> {
  ctx.packages ??= installPackages(ctx);
  return ctx.packages;
}

async function installPackages(ctx: UpContext): Promise<void> {
  const found = await Promise.all(APT_PACKAGES.map(async (pkg) => ({ pkg, path: await findExecutable(pkg) })));
  const missing = found.filter((f) => f.path === null).map((f) => f.pkg);
  if (missing.length === 0) return;
  ctx.log(`stack: installing ${APT_PACKAGES.join(' ')} with apt-get (missing: ${missing.join(', ')})`);
  // `env` sets the variable for apt-get alone; non-root users go through sudo, non-interactively so it fails fast.
  const sudo = process.getuid?.() === 0 ? [] : ['sudo', '-n'];
  const apt = [...sudo, 'env', 'DEBIAN_FRONTEND=noninteractive', 'apt-get'];
  const [command, ...prefix] = apt as [string, ...string[]];
  await mustRun('stack', 'apt-get update', command, [...prefix, 'update']);
  await mustRun('stack', 'apt-get install', command, [...prefix, 'install', '-y', '--no-install-recommends', ...APT_PACKAGES]);
}

function maven(ctx: UpContext, name: ComponentName, what: string, args: readonly string[]): Promise<RunResult> {
  const next = ctx.mavenQueue.catch(() => undefined).then(async () => {
    const mvn = await requireExecutable(name, 'mvn', 'install Maven, e.g. `apt-get install maven`');
    return mustRun(name, what, mvn, ['-q', '-B', ...args]);
  });
  ctx.mavenQueue = next;
  return next;
}

const JAVA_HINT = 'install a Java 17+ runtime, e.g. `apt-get install openjdk-17-jre-headless`';

// Kafka -------------------------------------------------------------------------------------------------------

function kafkaServerProperties(config: FabricConfig, paths: StackPaths): string {
  return [
    '# Rendered by `fabric stack up` (deploy/stack.ts) on every start; edit the launcher, not this file.',
    '# Single-node KRaft: this process is both the broker and the only controller.',
    'process.roles=broker,controller',
    'node.id=1',
    `controller.quorum.voters=1@127.0.0.1:${config.kafkaControllerPort}`,
    `listeners=PLAINTEXT://127.0.0.1:${config.kafkaPort},CONTROLLER://127.0.0.1:${config.kafkaControllerPort}`,
    `advertised.listeners=PLAINTEXT://127.0.0.1:${config.kafkaPort}`,
    'listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT',
    'controller.listener.names=CONTROLLER',
    'inter.broker.listener.name=PLAINTEXT',
    `log.dirs=${paths.kafkaData}`,
    '# One broker: internal topics cannot have more than one replica.',
    'offsets.topic.replication.factor=1',
    'transaction.state.log.replication.factor=1',
    'transaction.state.log.min.isr=1',
    'default.replication.factor=1',
    'min.insync.replicas=1',
    '# Consumers in tests join one by one; waiting for more members only slows the first assignment.',
    'group.initial.rebalance.delay.ms=0',
    '# Topics are declared by the topology and created explicitly; a typo must not create a new topic.',
    'auto.create.topics.enable=false',
    'num.partitions=3',
    '',
  ].join('\n');
}

/** Everything to stdout, which the launcher sends to <stackDir>/logs/kafka.log. */
const KAFKA_LOG4J = [
  'log4j.rootLogger=INFO, stdout',
  'log4j.appender.stdout=org.apache.log4j.ConsoleAppender',
  'log4j.appender.stdout.layout=org.apache.log4j.PatternLayout',
  'log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n',
  '# Per-request and state-change tracing would drown the useful lines.',
  'log4j.logger.kafka.request.logger=WARN',
  'log4j.logger.state.change.logger=WARN',
  'log4j.logger.kafka.controller=INFO',
  '',
].join('\n');

const kafka: Component = {
  name: 'kafka',
  startTimeoutMs: KAFKA_START_TIMEOUT_MS,
  address: (config) => `127.0.0.1:${config.kafkaPort}`,
  signature: (paths) => [join(paths.kafka, 'server.properties')],

  async probe(config, timeoutMs) {
    const client = new Kafka({
      clientId: 'fabric-stack-probe',
      brokers: [`127.0.0.1:${config.kafkaPort}`],
      connectionTimeout: timeoutMs,
      requestTimeout: timeoutMs,
      retry: { retries: 0 },
      logLevel: logLevel.NOTHING,
    });
    const admin = client.admin();
    try {
      const cluster = await withTimeout(admin.connect().then(() => admin.describeCluster()), timeoutMs, 'kafka describeCluster');
      return `cluster ${cluster.clusterId}, ${cluster.brokers.length} broker(s)`;
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  },

  async prepare(ctx) {
    const { paths, config } = ctx;
    const java = await requireExecutable('kafka', 'java', JAVA_HINT);
    if (!(await exists(join(paths.kafkaLibs, FETCHED_MARKER)))) {
      ctx.log('kafka: fetching the broker jars with Maven');
      await rm(paths.kafkaLibs, { recursive: true, force: true });
      await maven(ctx, 'kafka', 'fetching the Kafka jars', [
        '-f', join(ctx.deployDir, 'kafka', 'pom.xml'),
        'dependency:copy-dependencies', '-DincludeScope=runtime', `-DoutputDirectory=${paths.kafkaLibs}`,
      ]);
      await writeFile(join(paths.kafkaLibs, FETCHED_MARKER), `${new Date().toISOString()}\n`);
    }

    const properties = join(paths.kafka, 'server.properties');
    const log4j = join(paths.kafka, 'log4j.properties');
    await mkdir(paths.kafkaData, { recursive: true });
    await writeFile(properties, kafkaServerProperties(config, paths));
    await writeFile(log4j, KAFKA_LOG4J);
    const jvm = ['-Djava.awt.headless=true', `-Dlog4j.configuration=file:${log4j}`, '-cp', `${join(paths.kafkaLibs, '*')}`];

    // KRaft storage is formatted once; meta.properties in the log dir is the proof. The cluster id is kept so a
    // wiped data dir comes back as the same cluster.
    if (!(await exists(join(paths.kafkaData, 'meta.properties')))) {
      const idFile = join(paths.kafka, 'cluster-id');
      let clusterId = (await readFile(idFile, 'utf8').catch(() => '')).trim();
      if (clusterId === '') {
        const out = await mustRun('kafka', 'generating a cluster id', java, [...jvm, 'kafka.tools.StorageTool', 'random-uuid']);
        clusterId = out.stdout.trim().split('\n').pop()?.trim() ?? '';
        if (!/^[A-Za-z0-9_-]{22}$/.test(clusterId)) throw new FabricError('FABRIC_STACK_FAILED', `kafka: StorageTool random-uuid printed no cluster id: ${lastLines(out.output, 5)}`);
        await writeFile(idFile, `${clusterId}\n`);
      }
      ctx.log(`kafka: formatting KRaft storage (cluster ${clusterId})`);
      await mustRun('kafka', 'formatting KRaft storage', java, [...jvm, 'kafka.tools.StorageTool', 'format', '-t', clusterId, '-c', properties, '--ignore-formatted']);
    }

    return {
      command: java,
      args: ['-Xms256m', '-Xmx1g', '-XX:+UseG1GC', '-XX:MaxGCPauseMillis=20', ...jvm, 'kafka.Kafka', properties],
      cwd: paths.kafka,
    };
  },
};

// Schema registry -----------------------------------------------------------------------------------------------

/**
 * Apicurio settings. The `ccompat` and rules settings make its Confluent-compatible API behave like Confluent's
 * Schema Registry as far as Apicurio 3.0 allows (each checked against the running registry):
 * - ids are content ids (legacy-id-mode off): the same schema gets the same id in every subject and
 *   /schemas/ids/{id}/versions lists all of them, as in Confluent. Legacy mode would hand out one id per
 *   subject version instead. Changing this later changes the meaning of ids already in Kafka: don't.
 * - canonical hash: re-registering a schema that differs only in whitespace returns the existing id.
 * - global BACKWARD compatibility (Confluent's default) and full validity (invalid Avro is a 422, not stored).
 *   Note GET /config still reports NONE: that endpoint shows only rules set through the API.
 * - subject and version deletes are allowed, as in Confluent.
 * - no 1000-subject cap on GET /subjects (Confluent lists all; test runs accumulate prefixed subjects).
 */
function registrySettings(config: FabricConfig, paths: StackPaths): Record<string, string> {
  return {
    'quarkus.http.host': '127.0.0.1',
    'quarkus.http.port': String(config.registryPort),
    'apicurio.storage.kind': 'sql',
    'apicurio.storage.sql.kind': 'h2',
    // A file database, so schema ids survive restarts (ids are written into every Kafka record).
    'apicurio.datasource.url': `jdbc:h2:file:${join(paths.registryData, 'registry')};DB_CLOSE_ON_EXIT=FALSE`,
    'apicurio.datasource.username': 'sa',
    'apicurio.datasource.password': 'sa',
    'apicurio.ccompat.legacy-id-mode.enabled': 'false',
    'apicurio.ccompat.use-canonical-hash': 'true',
    'apicurio.ccompat.max-subjects': '100000',
    'apicurio.rules.global.compatibility': 'BACKWARD',
    'apicurio.rules.global.validity': 'FULL',
    'apicurio.rest.deletion.artifact.enabled': 'true',
    'apicurio.rest.deletion.artifact-version.enabled': 'true',
  };
}

const registryBase = (config: FabricConfig): string => `http://127.0.0.1:${config.registryPort}${REGISTRY_API_PATH}`;

const registry: Component = {
  name: 'registry',
  startTimeoutMs: REGISTRY_START_TIMEOUT_MS,
  address: registryBase,
  signature: (paths, config) => [join(paths.registryApp, REGISTRY_JAR), `-Dquarkus.http.port=${config.registryPort}`],

  async probe(config, timeoutMs) {
    const response = await fetch(`${registryBase(config)}/subjects`, { signal: AbortSignal.timeout(timeoutMs) });
    const body = await response.text();
    if (response.status !== 200) throw new Error(`GET /subjects answered ${response.status}`);
    const subjects: unknown = JSON.parse(body);
    return Array.isArray(subjects) ? `${subjects.length} subject(s)` : 'answering';
  },

  async prepare(ctx) {
    const { paths, config } = ctx;
    const java = await requireExecutable('registry', 'java', JAVA_HINT);
    if (!(await exists(join(paths.registryApp, FETCHED_MARKER)))) {
      const download = join(paths.registry, 'download');
      ctx.log(`registry: fetching Apicurio Registry ${REGISTRY_VERSION} with Maven (~110 MB)`);
      await rm(paths.registryApp, { recursive: true, force: true });
      await maven(ctx, 'registry', 'fetching Apicurio Registry', ['-f', join(ctx.deployDir, 'registry', 'pom.xml'), 'dependency:copy', `-DoutputDirectory=${download}`]);
      // python3's zipfile rather than unzip, which minimal Debian images lack.
      const python = await requireExecutable('registry', 'python3', 'needed to unpack the registry zip');
      await mustRun('registry', 'unpacking the registry zip', python, ['-m', 'zipfile', '-e', join(download, REGISTRY_ZIP), paths.registryApp]);
      if (!(await exists(join(paths.registryApp, REGISTRY_JAR)))) throw new FabricError('FABRIC_STACK_FAILED', `registry: ${REGISTRY_ZIP} has no ${REGISTRY_JAR}`);
      await rm(download, { recursive: true, force: true });
      await writeFile(join(paths.registryApp, FETCHED_MARKER), `${new Date().toISOString()}\n`);
    }
    await mkdir(paths.registryData, { recursive: true });
    const settings = Object.entries(registrySettings(config, paths)).map(([key, value]) => `-D${key}=${value}`);
    return { command: java, args: ['-Xmx512m', ...settings, '-jar', join(paths.registryApp, REGISTRY_JAR)], cwd: paths.registryApp };
  },
};

// Redis -------------------------------------------------------------------------------------------------------

const redis: Component = {
  name: 'redis',
  startTimeoutMs: DEFAULT_START_TIMEOUT_MS,
  address: (config) => `redis://127.0.0.1:${config.redisPort}`,
  // Redis rewrites its process title to "<path>/redis-server <bind>:<port>".
  signature: (_paths, config) => [`redis-server 127.0.0.1:${config.redisPort}`],

  async probe(config, timeoutMs) {
    const client = new Redis({
      host: '127.0.0.1',
      port: config.redisPort,
      lazyConnect: true,
      connectTimeout: timeoutMs,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
    });
    // Connection errors surface through the awaited calls; without a listener ioredis would also print them.
    client.on('error', () => undefined);
    try {
      const pong = await withTimeout(client.connect().then(() => client.ping()), timeoutMs, 'redis PING');
      if (pong !== 'PONG') throw new Error(`PING answered ${pong}`);
      return 'PONG';
    } finally {
      client.disconnect();
    }
  },

  async prepare(ctx) {
    await ensurePackages(ctx);
    const server = await requireExecutable('redis', 'redis-server', 'apt-get install redis-server');
    await mkdir(ctx.paths.redis, { recursive: true });
    return {
      command: server,
      args: [join(ctx.deployDir, 'local', 'redis.conf'), '--port', String(ctx.config.redisPort), '--dir', ctx.paths.redis],
      cwd: ctx.paths.redis,
    };
  },
};

// ClickHouse ----------------------------------------------------------------------------------------------------

const clickhouse: Component = {
  name: 'clickhouse',
  startTimeoutMs: DEFAULT_START_TIMEOUT_MS,
  address: (config) => `http://127.0.0.1:${config.clickhousePort}`,
  signature: (paths) => [join(paths.clickhouse, 'config.xml')],

  async probe(config, timeoutMs) {
    const response = await fetch(`http://127.0.0.1:${config.clickhousePort}/ping`, { signal: AbortSignal.timeout(timeoutMs) });
    const body = (await response.text()).trim();
    if (response.status !== 200 || body !== 'Ok.') throw new Error(`/ping answered ${response.status} ${body.slice(0, 100)}`);
    return 'Ok.';
  },

  async prepare(ctx) {
    const { paths, config } = ctx;
    await ensurePackages(ctx);
    const server = await requireExecutable('clickhouse', 'clickhouse-server', 'apt-get install clickhouse-server');
    for (const sub of ['data', 'tmp', 'user_files', 'format_schemas', 'logs']) await mkdir(join(paths.clickhouse, sub), { recursive: true });
    const template = await readFile(join(ctx.deployDir, 'local', 'clickhouse', 'config.xml'), 'utf8');
    const rendered = template
      .replaceAll('{{CLICKHOUSE_DIR}}', paths.clickhouse)
      .replaceAll('{{HTTP_PORT}}', String(config.clickhousePort))
      .replaceAll('{{TCP_PORT}}', String(config.clickhouseTcpPort));
    await writeFile(join(paths.clickhouse, 'config.xml'), rendered);
    await renderClickHouseUsers(ctx);
    return { command: server, args: [`--config-file=${join(paths.clickhouse, 'config.xml')}`], cwd: paths.clickhouse };
  },
};

/**
 * users.xml beside config.xml, with the read-only `analyst` user allowed on the configured database
 * only. ClickHouse re-reads users.xml by itself, so a running server picks a new one up within seconds.
 */
async function renderClickHouseUsers(ctx: UpContext): Promise<void> {
  const template = await readFile(join(ctx.deployDir, 'local', 'clickhouse', 'users.xml'), 'utf8');
  await writeFile(join(ctx.paths.clickhouse, 'users.xml'), template.replaceAll('{{DATABASE}}', ctx.config.clickhouseDatabase));
}
clickhouse.refresh = renderClickHouseUsers;

const COMPONENTS: readonly Component[] = [kafka, registry, redis, clickhouse];

// ---------------------------------------------------------------------------------------------------------------
// Starting

type Probe = { readonly ok: true; readonly detail: string } | { readonly ok: false; readonly error: string };

async function tryProbe(component: Component, config: FabricConfig, timeoutMs: number): Promise<Probe> {
  try {
    return { ok: true, detail: await component.probe(config, timeoutMs) };
  } catch (err) {
    return { ok: false, error: messageOf(err) };
  }
}

async function failure(paths: StackPaths, name: ComponentName, reason: string): Promise<FabricError> {
  const file = logFileOf(paths, name);
  return new FabricError('FABRIC_STACK_FAILED', `${name} ${reason}; last lines of ${file}:\n${await logTail(file)}`, { details: { component: name } });
}

/**
 * Polls the health check until it passes. `stillRunning` lets a crashed start fail at once (a taken port, a bad
 * config) instead of after the whole timeout.
 */
async function waitHealthy(component: Component, ctx: UpContext, stillRunning: () => Promise<string | null>): Promise<string> {
  const deadline = Date.now() + component.startTimeoutMs;
  let last = 'not probed';
  for (;;) {
    const probe = await tryProbe(component, ctx.config, Math.max(100, Math.min(PROBE_TIMEOUT_MS, deadline - Date.now())));
    if (probe.ok) return probe.detail;
    last = probe.error;
    const exit = await stillRunning();
    if (exit !== null) throw await failure(ctx.paths, component.name, `exited before becoming healthy (${exit})`);
    if (Date.now() >= deadline) throw await failure(ctx.paths, component.name, `did not become healthy within ${component.startTimeoutMs / 1000} s (last check: ${last})`);
    await sleep(POLL_INTERVAL_MS);
  }
}

async function rotateLog(file: string): Promise<void> {
  const size = await stat(file).then((s) => s.size, () => 0);
  if (size > LOG_ROTATE_BYTES) await rename(file, `${file}.1`);
}

/** Spawns the service detached from this process, so it keeps running after the CLI exits. */
async function launch(component: Component, ctx: UpContext, how: Launch): Promise<{ pid: number; exited: () => string | null }> {
  const logFile = logFileOf(ctx.paths, component.name);
  await rotateLog(logFile);
  const out = await open(logFile, 'a');
  let child: ChildProcess;
  let spawned: Promise<void>;
  let exit: string | null = null;
  try {
    await out.write(`\n===== ${new Date().toISOString()} fabric stack up: ${how.command} ${how.args.join(' ')}\n`);
    child = spawn(how.command, how.args, { cwd: how.cwd, detached: true, stdio: ['ignore', out.fd, out.fd] });
    // Listeners go on before the next await: a spawn failure is emitted asynchronously and would otherwise be
    // an unhandled 'error' event.
    spawned = new Promise<void>((started, failed) => {
      child.once('spawn', started);
      child.once('error', failed);
    });
    child.once('exit', (code, signal) => {
      exit = signal === null ? `exit code ${String(code)}` : `signal ${signal}`;
    });
  } finally {
    // The child holds its own copy of the descriptor.
    await out.close();
  }
  await spawned.catch((err: unknown) => {
    throw new FabricError('FABRIC_STACK_FAILED', `${component.name}: cannot start ${how.command}: ${messageOf(err)}`, { cause: err });
  });
  const pid = child.pid;
  if (pid === undefined) throw new FabricError('FABRIC_STACK_FAILED', `${component.name}: ${how.command} started without a pid`);
  await writeFile(pidFileOf(ctx.paths, component.name), `${pid}\n`);
  child.unref();
  return { pid, exited: () => exit };
}

async function ensureUp(component: Component, ctx: UpContext): Promise<ComponentStatus> {
  const { config, paths, log } = ctx;
  const { name } = component;
  const address = component.address(config);
  const pidState = await readPidState(paths, component, config);
  const pid = pidState.kind === 'alive' ? pidState.pid : null;

  // A healthy service on the port is accepted whoever started it: typically a previous `up`, whose pid file
  // may be gone.
  const now = await tryProbe(component, config, PROBE_TIMEOUT_MS);
  if (now.ok) {
    const origin = pid === null ? ' (not started by this stack: no live pid file)' : '';
    log(`${name}: already up at ${address}${origin}`);
    if (pid !== null) await component.refresh?.(ctx);
    return { name, up: true, address, pid, detail: `${now.detail}${origin}` };
  }

  const started = Date.now();
  if (pidState.kind === 'alive') {
    // Still booting from an earlier `up`, or hung: a second instance would only fight it for the port.
    log(`${name}: pid ${pidState.pid} is running but not healthy yet; waiting`);
    const detail = await waitHealthy(component, ctx, async () => ((await isOurProcess(pidState.pid, component.signature(paths, config))) ? null : 'process gone'));
    log(`${name}: up at ${address} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return { name, up: true, address, pid: pidState.pid, detail };
  }
  if (pidState.kind === 'stale') {
    log(`${name}: stale pid file (pid ${pidState.pid} is gone); starting again`);
    await rm(pidFileOf(paths, name), { force: true });
  }

  const how = await component.prepare(ctx);
  const child = await launch(component, ctx, how);
  log(`${name}: started (pid ${child.pid}), waiting for ${address}`);
  const detail = await waitHealthy(component, ctx, () => Promise.resolve(child.exited()));
  log(`${name}: up at ${address} after ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return { name, up: true, address, pid: child.pid, detail };
}

// ---------------------------------------------------------------------------------------------------------------
// Public API

/**
 * Starts every component that is not already healthy (installing and fetching what is missing first) and waits
 * until all are healthy. Idempotent: with everything up it only runs the health checks.
 */
function selected(only: readonly ComponentName[] | undefined): typeof COMPONENTS {
  return only && only.length ? COMPONENTS.filter((c) => only.includes(c.name)) : COMPONENTS;
}

export async function stackUp(config: FabricConfig, log: (line: string) => void, only?: readonly ComponentName[]): Promise<ComponentStatus[]> {
  const paths = stackPaths(config);
  await mkdir(paths.logs, { recursive: true });
  await mkdir(paths.run, { recursive: true });
  const ctx: UpContext = { config, paths, deployDir: await findDeployDir(), log, packages: undefined, mavenQueue: Promise.resolve() };

  // All four start together; a failing one does not stop the others, so one `up` reports every problem.
  const components = selected(only);
  const results = await Promise.allSettled(components.map((component) => ensureUp(component, ctx)));
  const errors = results.flatMap((result, i) => {
    if (result.status === 'fulfilled') return [];
    const err: unknown = result.reason;
    return [isFabricError(err) ? err : new FabricError('FABRIC_STACK_FAILED', `${components[i]?.name ?? 'stack'}: ${messageOf(err)}`, { cause: err })];
  });
  const [first] = errors;
  if (first !== undefined) {
    throw errors.length === 1 ? first : new FabricError('FABRIC_STACK_FAILED', errors.map((e) => e.message).join('\n\n'), { cause: first });
  }
  return results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
}

/** Stops the components this stack started (SIGTERM, then SIGKILL after 20 s). Data is kept. */
export async function stackDown(config: FabricConfig, log: (line: string) => void, only?: readonly ComponentName[]): Promise<void> {
  const paths = stackPaths(config);
  await Promise.all(selected(only).map(async (component) => {
    const { name } = component;
    const state = await readPidState(paths, component, config);
    const pidFile = pidFileOf(paths, name);
    if (state.kind === 'none') {
      log(`${name}: not running (no pid file)`);
      return;
    }
    if (state.kind === 'stale') {
      log(`${name}: not running (stale pid file removed)`);
      await rm(pidFile, { force: true });
      return;
    }
    const signature = component.signature(paths, config);
    log(`${name}: stopping pid ${state.pid}`);
    try {
      process.kill(state.pid, 'SIGTERM');
    } catch {
      // Exited since the pid check; the wait below sees it gone.
    }
    const deadline = Date.now() + STOP_GRACE_MS;
    while (Date.now() < deadline && (await isOurProcess(state.pid, signature))) await sleep(200);
    if (await isOurProcess(state.pid, signature)) {
      log(`${name}: still running after ${STOP_GRACE_MS / 1000} s; sending SIGKILL`);
      try {
        process.kill(state.pid, 'SIGKILL');
      } catch {
        // Exited between the check and the signal.
      }
      while (await isOurProcess(state.pid, signature)) await sleep(100);
    }
    await rm(pidFile, { force: true });
    log(`${name}: stopped`);
  }));
}

/** Health of every component, with short timeouts; never throws for a component that is down. */
export async function stackStatus(config: FabricConfig): Promise<ComponentStatus[]> {
  const paths = stackPaths(config);
  return Promise.all(COMPONENTS.map(async (component): Promise<ComponentStatus> => {
    const [state, probe] = await Promise.all([readPidState(paths, component, config), tryProbe(component, config, PROBE_TIMEOUT_MS)]);
    const pid = state.kind === 'alive' ? state.pid : null;
    const detail = probe.ok ? probe.detail : `${probe.error}${state.kind === 'stale' ? ' (stale pid file)' : ''}`;
    return { name: component.name, up: probe.ok, address: component.address(config), pid, detail };
  }));
}
