/**
 * Training-set IO: reads a labels file (CSV or Parquet) and writes a result table (CSV or Parquet).
 *
 * Labels: a header (CSV) or schema (Parquet) with a `ts` column and the caller's required key columns; any
 * other columns are carried through unchanged. `ts` is epoch milliseconds (an integer) or an ISO 8601
 * string: a date (`2024-05-01`, UTC midnight) or a date-time, with or without a zone (`2024-05-01T12:00:00.250Z`,
 * `2024-05-01 12:00:00+02:00`). A date-time without a zone is UTC (as pandas and Python write naive
 * timestamps, and as Feast reads them), never the machine's local zone.
 * In Parquet `ts` may also be a timestamp (decoded to a Date) or an INT64. Every problem is a
 * FabricError('FABRIC_LABELS_INVALID') whose one-line message names the file, the line (CSV: physical line,
 * header = line 1, a record spanning lines is named by its first; Parquet: `row N`, 1-based) and the column.
 *
 * Output: CSV (header line, RFC 4180 quoting, `\n` line ends, missing values empty) streamed in chunks with
 * backpressure, or Parquet (OPTIONAL columns: UTF8 strings, DOUBLE, INT64) written one row group at a time.
 * Either is written to a temporary file beside the target and renamed into place, so a failed write never
 * leaves a partial table under the final name.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname, extname } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CsvError, parse as parseCsv } from 'csv-parse';
import { asyncBufferFromFile, parquetMetadataAsync, parquetRead, parquetSchema } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { ByteWriter, ParquetWriter, type SchemaElement } from 'hyparquet-writer';
import { FabricError, messageOf } from '../../topology/errors.js';

export interface LabelsTable {
  /** Column names in file order. */
  readonly columns: readonly string[];
  /** Row values in column order as read (CSV: strings; Parquet: the decoded JS values, bigint converted to number when safe, Date to epoch ms). */
  readonly rows: readonly (readonly unknown[])[];
  /** Per row, the label instant in epoch ms parsed from column `ts` (epoch milliseconds as an integer, or an ISO 8601 string; in Parquet also a Date/timestamp or integer). */
  readonly ts: readonly number[];
}

export type ColumnType = 'string' | 'double' | 'long';
export interface OutputColumn {
  readonly name: string;
  readonly type: ColumnType;
}

const TS_COLUMN = 'ts';
/** Rows per Parquet row group (and per batch held in memory while writing). */
const PARQUET_ROW_GROUP = 100_000;
/** CSV output is handed to the file stream in chunks of about this many characters. */
const CSV_CHUNK_CHARS = 64 * 1024;

// ---------------------------------------------------------------------------------------------- reading

/**
 * Reads labels; `required` are columns that must exist besides `ts` (e.g. ['account_id']) and must not be
 * empty in any row. Errors: FabricError('FABRIC_LABELS_INVALID', one line naming file, line and column/value).
 */
export async function readLabels(path: string, required: readonly string[]): Promise<LabelsTable> {
  const ext = extname(path).toLowerCase();
  if (ext === '.csv') return readCsvLabels(path, required);
  if (ext === '.parquet') return readParquetLabels(path, required);
  throw invalid(`${path}: unsupported labels file extension ${JSON.stringify(ext)} (expected .csv or .parquet)`);
}

function invalid(message: string, cause?: unknown): FabricError {
  return new FabricError('FABRIC_LABELS_INVALID', message, cause === undefined ? {} : { cause });
}

/** Validates the header once, then each row's key columns and `ts`. */
class LabelsChecker {
  private readonly tsIndex: number;
  private readonly keys: readonly { readonly name: string; readonly index: number }[];

  constructor(
    private readonly path: string,
    columns: readonly string[],
    required: readonly string[],
    where: string,
  ) {
    const seen = new Set<string>();
    for (const c of columns) {
      if (seen.has(c)) throw invalid(`${path}: ${where}: column ${JSON.stringify(c)} appears more than once (columns found: ${columns.join(', ')})`);
      seen.add(c);
    }
    const wanted = [TS_COLUMN, ...required.filter((c) => c !== TS_COLUMN)];
    for (const c of wanted) {
      if (!seen.has(c)) throw invalid(`${path}: ${where}: missing column ${JSON.stringify(c)} (columns found: ${columns.length === 0 ? 'none' : columns.join(', ')})`);
    }
    this.tsIndex = columns.indexOf(TS_COLUMN);
    this.keys = [...new Set(required)].filter((c) => c !== TS_COLUMN).map((name) => ({ name, index: columns.indexOf(name) }));
  }

  /** Returns the row's label instant in epoch ms; `where` is e.g. `line 7` or `row 6`. */
  check(row: readonly unknown[], where: string): number {
    for (const k of this.keys) {
      if (isEmpty(row[k.index])) throw invalid(`${this.path}: ${where}: column ${JSON.stringify(k.name)} is empty (an entity key needs a value)`);
    }
    const raw = row[this.tsIndex];
    const ts = labelInstant(raw);
    if (ts === undefined) {
      throw invalid(`${this.path}: ${where}: column "ts" value ${showValue(raw)} is neither epoch milliseconds (a safe integer) nor an ISO 8601 date or date-time`);
    }
    return ts;
  }
}

function isEmpty(v: unknown): boolean {
  return v === null || v === undefined || (typeof v === 'string' && v.trim() === '');
}

function showValue(v: unknown): string {
  if (v === null || v === undefined) return 'empty';
  let s: string;
  if (typeof v === 'string') s = JSON.stringify(v);
  else if (typeof v === 'bigint') s = `${v}n`;
  else if (typeof v === 'object' && !(v instanceof Date)) s = safeJson(v);
  else s = String(v);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x)) ?? String(v);
  } catch {
    return String(v);
  }
}

/** A label instant in epoch ms, or undefined when `v` is not one. */
function labelInstant(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) ? v : undefined;
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
  if (v instanceof Date) {
    const t = v.getTime();
    return Number.isSafeInteger(t) ? t : undefined;
  }
  if (typeof v === 'string') return parseTs(v);
  return undefined;
}

// Integers, also as pandas writes them from a float column (1714564800000.0).
const EPOCH_MS_RE = /^-?\d+(?:\.0+)?$/;
// A calendar date, optionally with a time and a zone (Z, ±hh, ±hhmm or ±hh:mm; none means UTC).
const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?)?$/;

/**
 * Parses a `ts` string strictly: an integer (epoch milliseconds, safe range) or ISO 8601 as described in the
 * module comment. Fractions of a second beyond milliseconds are truncated. Exported for tests.
 */
export function parseTs(text: string): number | undefined {
  const s = text.trim();
  if (EPOCH_MS_RE.test(s)) {
    const n = Number(s);
    return Number.isSafeInteger(n) ? n : undefined;
  }
  const m = ISO_RE.exec(s);
  if (m === null) return undefined;
  const [, ys, mos, ds, hs, mis, ss, frac, , sign, ohs, oms] = m;
  const year = Number(ys);
  const month = Number(mos);
  const day = Number(ds);
  const hour = hs === undefined ? 0 : Number(hs);
  const minute = mis === undefined ? 0 : Number(mis);
  const second = ss === undefined ? 0 : Number(ss);
  const ms = frac === undefined ? 0 : Number(`${frac}00`.slice(0, 3));
  const offsetMin = sign === undefined ? 0 : (sign === '-' ? -1 : 1) * (Number(ohs) * 60 + (oms === undefined ? 0 : Number(oms)));
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return undefined;
  if (hour > 23 || minute > 59 || second > 59) return undefined;
  if (ohs !== undefined && (Number(ohs) > 23 || (oms !== undefined && Number(oms) > 59))) return undefined;
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day); // unlike Date.UTC, keeps years 0-99 as written
  d.setUTCHours(hour, minute, second, ms);
  return d.getTime() - offsetMin * 60_000;
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

/** Line breaks inside a record's (quoted) fields: `\r\n`, `\n` or a lone `\r` each count once. */
function lineBreaks(record: readonly string[]): number {
  let n = 0;
  for (const f of record) {
    if (f.indexOf('\n') < 0 && f.indexOf('\r') < 0) continue;
    for (let i = 0; i < f.length; i++) {
      const ch = f.charCodeAt(i);
      if (ch === 10 || (ch === 13 && f.charCodeAt(i + 1) !== 10)) n++;
    }
  }
  return n;
}

async function readCsvLabels(path: string, required: readonly string[]): Promise<LabelsTable> {
  const source = createReadStream(path);
  // No `info: true`: a per-record info snapshot makes parsing several times slower. Line numbers are
  // counted here instead, so empty lines come through as [''] (rather than skip_empty_lines) to be counted.
  const parser = parseCsv({ bom: true, relax_column_count: true });
  source.on('error', (err) => parser.destroy(err));
  source.pipe(parser);

  let checker: LabelsChecker | undefined;
  let columns: string[] = [];
  const rows: string[][] = [];
  const ts: number[] = [];
  // A record starts on the line after the previous record's last line; errors name that first line.
  let endLine = 0;
  try {
    for await (const record of parser as AsyncIterable<string[]>) {
      const line = endLine + 1;
      endLine = line + lineBreaks(record);
      if (record.length === 1 && record[0] === '') continue; // an empty line
      if (checker === undefined) {
        columns = record;
        checker = new LabelsChecker(path, columns, required, `line ${line}`);
        continue;
      }
      if (record.length !== columns.length) {
        throw invalid(`${path}: line ${line}: ${record.length} field${record.length === 1 ? '' : 's'}, the header has ${columns.length}`);
      }
      ts.push(checker.check(record, `line ${line}`));
      rows.push(record);
    }
  } catch (err) {
    if (err instanceof FabricError) throw err;
    if (err instanceof CsvError) {
      const at = typeof err['lines'] === 'number' ? `line ${err['lines']}: ` : '';
      throw invalid(`${path}: ${at}not valid CSV: ${err.message}`, err);
    }
    throw invalid(`${path}: cannot read labels: ${messageOf(err)}`, err);
  } finally {
    source.destroy();
  }
  if (checker === undefined) throw invalid(`${path}: line 1: missing column "ts" (columns found: none, the file is empty)`);
  return { columns, rows, ts };
}

async function readParquetLabels(path: string, required: readonly string[]): Promise<LabelsTable> {
  let columns: string[] = [];
  let checker: LabelsChecker | undefined;
  let raw: unknown[][] = [];
  try {
    const file = await asyncBufferFromFile(path);
    const metadata = await parquetMetadataAsync(file);
    columns = parquetSchema(metadata).children.map((c) => c.element.name);
    checker = new LabelsChecker(path, columns, required, 'schema'); // before decoding any data
    await parquetRead({
      file,
      metadata,
      compressors,
      rowFormat: 'array',
      onComplete: (rows: unknown[][]) => {
        raw = rows;
      },
    });
  } catch (err) {
    if (err instanceof FabricError) throw err;
    throw invalid(`${path}: not a readable Parquet file: ${messageOf(err)}`, err);
  }
  const ts: number[] = new Array<number>(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const row = raw[i] as unknown[];
    for (let c = 0; c < row.length; c++) row[c] = fromParquet(row[c]);
    ts[i] = (checker as LabelsChecker).check(row, `row ${i + 1}`);
  }
  return { columns, rows: raw, ts };
}

function fromParquet(v: unknown): unknown {
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  if (v instanceof Date) return v.getTime();
  return v;
}

// ---------------------------------------------------------------------------------------------- writing

/**
 * Writes rows (values in column order; null/undefined = missing) as CSV or Parquet, chosen by the extension
 * (.csv, .parquet); anything else -> FabricError('FABRIC_CLI_USAGE'). Creates parent dirs. Returns the
 * number of rows written. Values are converted per column type the same way for both formats: 'string'
 * takes strings (numbers, bigints, booleans and Dates are written as text), 'double' numbers, bigints or
 * numeric strings, 'long' integers, bigints or integer strings (an empty string is missing for both).
 * A value that does not fit its column's type, or a row of the wrong length, is a TypeError/RangeError
 * (a bug in the caller, not in a file).
 */
export async function writeTable(path: string, columns: readonly OutputColumn[], rows: Iterable<readonly unknown[]>): Promise<number> {
  const ext = extname(path).toLowerCase();
  if (ext !== '.csv' && ext !== '.parquet') {
    throw new FabricError('FABRIC_CLI_USAGE', `${path}: unsupported output extension ${JSON.stringify(ext)} (expected .csv or .parquet)`);
  }
  if (columns.length === 0) throw new FabricError('FABRIC_CLI_USAGE', `${path}: a table needs at least one column`);
  const names = new Set<string>();
  for (const c of columns) {
    if (names.has(c.name)) throw new FabricError('FABRIC_CLI_USAGE', `${path}: output column ${JSON.stringify(c.name)} appears more than once`);
    names.add(c.name);
  }
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}.tmp`;
  try {
    const n = ext === '.csv' ? await writeCsv(tmp, columns, rows) : await writeParquet(tmp, columns, rows);
    await rename(tmp, path);
    return n;
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

type Cell = string | number | bigint | null;

const DOUBLE_RE = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;
const LONG_RE = /^[+-]?\d+$/;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

function cellError(column: OutputColumn, rowIndex: number, v: unknown): TypeError {
  return new TypeError(`writeTable: row ${rowIndex + 1}, column ${JSON.stringify(column.name)} (${column.type}): cannot write ${showValue(v)} (${typeof v})`);
}

/** The value as its column's type: string, number (double), bigint (long) or null. */
function toCell(v: unknown, column: OutputColumn, rowIndex: number): Cell {
  if (v === null || v === undefined) return null;
  switch (column.type) {
    case 'string':
      if (typeof v === 'string') return v;
      if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
      if (v instanceof Date && !Number.isNaN(v.getTime())) return v.toISOString();
      throw cellError(column, rowIndex, v);
    case 'double':
      if (typeof v === 'number') return v;
      if (typeof v === 'bigint') return Number(v);
      if (typeof v === 'string') {
        const s = v.trim();
        if (s === '') return null;
        if (DOUBLE_RE.test(s)) return Number(s);
        if (s === 'NaN' || s === 'Infinity' || s === '+Infinity' || s === '-Infinity') return Number(s);
      }
      throw cellError(column, rowIndex, v);
    case 'long': {
      let b: bigint | undefined;
      if (typeof v === 'bigint') b = v;
      else if (typeof v === 'number' && Number.isInteger(v)) b = BigInt(v);
      else if (typeof v === 'string') {
        const s = v.trim();
        if (s === '') return null;
        if (LONG_RE.test(s)) b = BigInt(s);
      }
      if (b === undefined) throw cellError(column, rowIndex, v);
      if (b < INT64_MIN || b > INT64_MAX) throw new RangeError(`writeTable: row ${rowIndex + 1}, column ${JSON.stringify(column.name)} (long): ${b} is outside INT64`);
      return b;
    }
  }
}

function checkWidth(row: readonly unknown[], width: number, rowIndex: number): void {
  if (row.length !== width) throw new RangeError(`writeTable: row ${rowIndex + 1} has ${row.length} values for ${width} columns`);
}

const NEEDS_QUOTES = /[",\r\n]/;

/** One CSV field: RFC 4180 quoting (fields with a comma, quote or line break are quoted, quotes doubled). */
export function csvField(s: string): string {
  return NEEDS_QUOTES.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function csvText(c: Cell): string {
  if (c === null) return '';
  if (typeof c === 'string') return csvField(c);
  return String(c);
}

async function writeCsv(path: string, columns: readonly OutputColumn[], rows: Iterable<readonly unknown[]>): Promise<number> {
  let count = 0;
  const width = columns.length;
  function* chunks(): Generator<string> {
    let chunk = `${columns.map((c) => csvField(c.name)).join(',')}\n`;
    const fields = new Array<string>(width);
    for (const row of rows) {
      checkWidth(row, width, count);
      for (let c = 0; c < width; c++) fields[c] = csvText(toCell(row[c], columns[c] as OutputColumn, count));
      chunk += `${fields.join(',')}\n`;
      count++;
      if (chunk.length >= CSV_CHUNK_CHARS) {
        yield chunk;
        chunk = '';
      }
    }
    if (chunk.length > 0) yield chunk;
  }
  // Readable.from pulls the next chunk only when the file stream wants more: backpressure end to end.
  await pipeline(Readable.from(chunks(), { objectMode: false }), createWriteStream(path));
  return count;
}

/** A ByteWriter that empties itself into a file after each row group (hyparquet-writer awaits `flush`). */
class FileByteWriter extends ByteWriter {
  constructor(private readonly handle: FileHandle) {
    super(1 << 20);
  }

  async flush(): Promise<void> {
    const bytes = new Uint8Array(this.buffer, 0, this.index);
    for (let done = 0; done < bytes.length; ) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done);
      done += bytesWritten;
    }
    this.index = 0;
  }

  override async finish(): Promise<void> {
    await this.flush();
  }
}

function parquetElement(c: OutputColumn): SchemaElement {
  switch (c.type) {
    case 'string':
      return { name: c.name, type: 'BYTE_ARRAY', converted_type: 'UTF8', repetition_type: 'OPTIONAL' };
    case 'double':
      return { name: c.name, type: 'DOUBLE', repetition_type: 'OPTIONAL' };
    case 'long':
      return { name: c.name, type: 'INT64', repetition_type: 'OPTIONAL' };
  }
}

async function writeParquet(path: string, columns: readonly OutputColumn[], rows: Iterable<readonly unknown[]>): Promise<number> {
  const width = columns.length;
  const schema: SchemaElement[] = [{ name: 'root', num_children: width }, ...columns.map(parquetElement)];
  const handle = await open(path, 'w');
  try {
    const writer = new FileByteWriter(handle);
    const pq = new ParquetWriter({ writer, schema });
    let count = 0;
    let batch: Cell[][] = columns.map(() => []);
    let batchRows = 0;
    const flushBatch = async (): Promise<void> => {
      if (batchRows === 0) return;
      await pq.write({ columnData: columns.map((c, i) => ({ name: c.name, data: batch[i] as Cell[] })), rowGroupSize: batchRows });
      batch = columns.map(() => []);
      batchRows = 0;
    };
    for (const row of rows) {
      checkWidth(row, width, count);
      for (let c = 0; c < width; c++) (batch[c] as Cell[]).push(toCell(row[c], columns[c] as OutputColumn, count));
      count++;
      if (++batchRows >= PARQUET_ROW_GROUP) await flushBatch();
    }
    await flushBatch();
    await pq.finish();
    return count;
  } finally {
    await handle.close();
  }
}
