/**
 * ClickHouse retention: tables are partitioned by day of event time (YYYYMMDD partition ids; tables
 * created before the migrations may keep YYYYMM months), and `fabric retention apply` drops the whole
 * partitions older than their table's retention. Rules come from FABRIC_CLICKHOUSE_RETENTION as
 * `pattern=Nd` pairs (`events_*=30d,alerts=365d`, `keep` for never); the first pattern matching a
 * table applies (`*` at the end matches any rest); a table no rule matches is kept.
 */
export interface RetentionRule {
  readonly pattern: string;
  /** Days kept; null: kept forever. */
  readonly days: number | null;
}

export function parseRetention(spec: string): RetentionRule[] {
  const rules: RetentionRule[] = [];
  for (const part of spec.split(',').map((p) => p.trim()).filter(Boolean)) {
    const m = /^([a-z_][a-z0-9_]*\*?)=(?:([1-9][0-9]*)d|keep)$/.exec(part);
    if (!m) throw new Error(`retention rule ${JSON.stringify(part)} is not table=Nd, table_prefix*=Nd or table=keep`);
    rules.push({ pattern: m[1]!, days: m[2] === undefined ? null : Number(m[2]) });
  }
  return rules;
}

export function retentionFor(rules: readonly RetentionRule[], table: string): RetentionRule | null {
  for (const r of rules) if (r.pattern.endsWith('*') ? table.startsWith(r.pattern.slice(0, -1)) : table === r.pattern) return r;
  return null;
}

export interface Partition {
  readonly table: string;
  readonly partition: string;
  readonly rows: number;
}

export interface PlannedDrop extends Partition {
  readonly rule: string;
  readonly days: number;
  /** The first day kept (UTC), YYYY-MM-DD. */
  readonly keepFrom: string;
}

function ymd(d: Date): string {
  return d.toISOString().slice(0, 10);
}

/**
 * The partitions to drop at `now`: a day partition (YYYYMMDD) when the day is before the first day kept
 * (now minus the retention, UTC); a month partition (YYYYMM) when the whole month is. Other partition
 * ids are never dropped.
 */
export function planRetention(rules: readonly RetentionRule[], partitions: readonly Partition[], now: number): PlannedDrop[] {
  const drops: PlannedDrop[] = [];
  for (const p of partitions) {
    const rule = retentionFor(rules, p.table);
    if (!rule || rule.days === null) continue;
    const keepFrom = ymd(new Date(now - rule.days * 86_400_000));
    const firstDay = keepFrom.replaceAll('-', '');
    const old = /^\d{8}$/.test(p.partition) ? p.partition < firstDay : /^\d{6}$/.test(p.partition) ? p.partition < firstDay.slice(0, 6) : false;
    if (old) drops.push({ ...p, rule: `${rule.pattern}=${rule.days}d`, days: rule.days, keepFrom });
  }
  return drops.sort((a, b) => a.table.localeCompare(b.table) || a.partition.localeCompare(b.partition));
}
