import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { parse as parseCsvSync } from 'csv-parse/sync';
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from 'hyparquet';
import { parquetWriteBuffer, type ColumnSource } from 'hyparquet-writer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csvField, parseTs, readLabels, writeTable, type OutputColumn } from '../../processors/features/labels-io.js';
import { FabricError } from '../../topology/errors.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'labels-io-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let seq = 0;
async function file(ext: string, content: string | Uint8Array | ArrayBuffer): Promise<string> {
  const path = join(dir, `f${++seq}${ext}`);
  await writeFile(path, content instanceof ArrayBuffer ? new Uint8Array(content) : content);
  return path;
}

/** The FabricError `readLabels` rejects with (fails the test when it resolves). */
async function labelsError(path: string, required: readonly string[] = ['account_id']): Promise<FabricError> {
  const err: unknown = await readLabels(path, required).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FabricError);
  const fe = err as FabricError;
  expect(fe.code).toBe('FABRIC_LABELS_INVALID');
  expect(fe.message).toContain(path);
  expect(fe.message).not.toContain('\n');
  return fe;
}

const T0 = Date.UTC(2024, 4, 1, 12, 0, 0); // 2024-05-01T12:00:00Z

describe('parseTs', () => {
  it('reads epoch milliseconds and strict ISO 8601', () => {
    expect(parseTs(String(T0))).toBe(T0);
    expect(parseTs(' 1714564800000 ')).toBe(T0);
    expect(parseTs('0')).toBe(0);
    expect(parseTs('-1000')).toBe(-1000);
    expect(parseTs('2024-05-01T12:00:00Z')).toBe(T0);
    expect(parseTs('2024-05-01t12:00:00z')).toBe(T0);
    expect(parseTs('2024-05-01 12:00:00Z')).toBe(T0);
    expect(parseTs('2024-05-01T12:00Z')).toBe(T0);
    expect(parseTs('2024-05-01T12:00:00.25Z')).toBe(T0 + 250);
    expect(parseTs('2024-05-01T12:00:00.123456789Z')).toBe(T0 + 123);
    expect(parseTs('2024-05-01T12:00:00,5Z')).toBe(T0 + 500);
    expect(parseTs('2024-05-01T14:00:00+02:00')).toBe(T0);
    expect(parseTs('2024-05-01T14:00:00+0200')).toBe(T0);
    expect(parseTs('2024-05-01T14:00:00+02')).toBe(T0);
    expect(parseTs('2024-05-01T06:30:00-05:30')).toBe(T0);
    expect(parseTs('2024-05-01')).toBe(Date.UTC(2024, 4, 1));
    expect(parseTs('2024-02-29')).toBe(Date.UTC(2024, 1, 29));
    expect(parseTs('0050-01-01')).toBe(new Date('0050-01-01T00:00:00Z').getTime());
  });

  it('reads a date-time without a zone as UTC, never the local zone, and an integral float as epoch ms (as pandas and Python write them)', () => {
    expect(parseTs('2024-05-01T12:00:00')).toBe(Date.UTC(2024, 4, 1, 12));
    expect(parseTs('1714564800000.0')).toBe(1714564800000);
    expect(parseTs('2024-05-01 12:00')).toBe(Date.UTC(2024, 4, 1, 12));
    expect(parseTs('2024-05-01 12:00:00.123456')).toBe(Date.UTC(2024, 4, 1, 12, 0, 0, 123));
  });

  it('refuses anything else rather than guess', () => {
    for (const bad of [
      '',
      ' ',
      'yesterday',
      '1.5',
      '1e12',
      '+1714564800000',
      '0x10',
      '9007199254740993', // beyond the safe integer range
      '2024-13-01',
      '2024-02-30',
      '2023-02-29',
      '2024-04-31',
      '2024-05-01T24:00:00Z',
      '2024-05-01T12:60:00Z',
      '2024-05-01T12:00:60Z',
      '2024-05-01T12:00:00+24:00',
      '2024-05-01T12:00:00+02:60',
      '2024-5-1',
      '20240501T120000Z',
      'May 1, 2024',
      'Wed, 01 May 2024 12:00:00 GMT',
      '2024-05-01T12:00:00Zjunk',
    ]) {
      expect(parseTs(bad), bad).toBeUndefined();
    }
  });
});

describe('readLabels (CSV)', () => {
  it('reads quoted fields, epoch and ISO ts, and carries extra columns through', async () => {
    const path = await file(
      '.csv',
      [
        'account_id,ts,label,note,weight',
        `acc-1,${T0},1,"has, comma",0.5`,
        'acc-2,2024-05-01T12:00:01.500Z,0,"say ""hi""",',
        '"acc,3",2024-05-01T14:00:02+02:00,1,"two',
        'lines",2',
        `acc-4, ${T0 + 3} ,0,,x`,
        '',
      ].join('\n'),
    );
    const t = await readLabels(path, ['account_id']);
    expect(t.columns).toEqual(['account_id', 'ts', 'label', 'note', 'weight']);
    expect(t.rows).toEqual([
      ['acc-1', String(T0), '1', 'has, comma', '0.5'],
      ['acc-2', '2024-05-01T12:00:01.500Z', '0', 'say "hi"', ''],
      ['acc,3', '2024-05-01T14:00:02+02:00', '1', 'two\nlines', '2'],
      ['acc-4', ` ${T0 + 3} `, '0', '', 'x'],
    ]);
    expect(t.ts).toEqual([T0, T0 + 1500, T0 + 2000, T0 + 3]);
  });

  it('handles CRLF line ends, a BOM, blank lines and a header-only file', async () => {
    const crlf = await file('.csv', `\uFEFFts,account_id\r\n${T0},a\r\n\r\n${T0 + 1},"b\r\nc"\r\n`);
    const t = await readLabels(crlf, ['account_id']);
    expect(t.columns).toEqual(['ts', 'account_id']);
    expect(t.rows).toEqual([
      [String(T0), 'a'],
      [String(T0 + 1), 'b\r\nc'],
    ]);
    expect(t.ts).toEqual([T0, T0 + 1]);

    const headerOnly = await file('.csv', 'account_id,ts,label\n');
    expect(await readLabels(headerOnly, ['account_id'])).toEqual({ columns: ['account_id', 'ts', 'label'], rows: [], ts: [] });
    const noNewline = await file('.csv', 'account_id,ts');
    expect(await readLabels(noNewline, ['account_id'])).toEqual({ columns: ['account_id', 'ts'], rows: [], ts: [] });
  });

  it('refuses an unknown extension, naming the file', async () => {
    const path = await file('.tsv', 'account_id\tts\n');
    const err = await labelsError(path);
    expect(err.message).toContain('".tsv"');
    const none = await file('', 'account_id,ts\n');
    expect((await labelsError(none)).message).toContain('expected .csv or .parquet');
  });

  it('refuses a missing file', async () => {
    const err = await labelsError(join(dir, 'nope.csv'));
    expect(err.message).toContain('ENOENT');
  });

  it('names a missing required column and the columns found', async () => {
    const path = await file('.csv', `ts,user_id,label\n${T0},u,1\n`);
    const err = await labelsError(path, ['account_id']);
    expect(err.message).toBe(`${path}: line 1: missing column "account_id" (columns found: ts, user_id, label)`);
  });

  it('names a missing ts column', async () => {
    const path = await file('.csv', 'account_id,time,label\na,1,1\n');
    const err = await labelsError(path, ['account_id']);
    expect(err.message).toBe(`${path}: line 1: missing column "ts" (columns found: account_id, time, label)`);
  });

  it('refuses an empty file and a duplicated column', async () => {
    const empty = await file('.csv', '');
    expect((await labelsError(empty)).message).toContain('line 1: missing column "ts"');
    const dup = await file('.csv', 'account_id,ts,account_id\n');
    expect((await labelsError(dup)).message).toContain('line 1: column "account_id" appears more than once');
  });

  it('names the line of an empty entity key, counting multi-line records and blank lines', async () => {
    // line 1 header, 2-3 one record, 4 blank, 5 ok, 6 empty key
    const path = await file('.csv', `account_id,ts,note\na,${T0},"x\ny"\n\nb,${T0},z\n,${T0},w\n`);
    const err = await labelsError(path, ['account_id']);
    expect(err.message).toBe(`${path}: line 6: column "account_id" is empty (an entity key needs a value)`);
    const blank = await file('.csv', `account_id,ts\na,${T0}\n  ,${T0}\n`);
    expect((await labelsError(blank)).message).toContain(`${blank}: line 3: column "account_id" is empty`);
  });

  it('names the line and value of an unreadable ts', async () => {
    const cases: [string, number, string][] = [
      [`account_id,ts\na,${T0}\nb,yesterday\n`, 3, '"yesterday"'],
      [`account_id,ts\na,2024-05-01T25:00:00\n`, 2, '"2024-05-01T25:00:00"'],
      [`account_id,ts\na,${T0}\nb,${T0}\nc,1.5\n`, 4, '"1.5"'],
      [`account_id,ts\na,9007199254740993\n`, 2, '"9007199254740993"'],
      [`account_id,ts\na,2024-02-30\n`, 2, '"2024-02-30"'],
      [`account_id,ts\na,\n`, 2, '""'],
    ];
    for (const [content, line, shown] of cases) {
      const path = await file('.csv', content);
      const err = await labelsError(path);
      expect(err.message).toBe(`${path}: line ${line}: column "ts" value ${shown} is neither epoch milliseconds (a safe integer) nor an ISO 8601 date or date-time`);
    }
  });

  it('names the line of a row with the wrong number of fields', async () => {
    const more = await file('.csv', `account_id,ts,label\na,${T0},1\nb,${T0},1,extra\n`);
    expect((await labelsError(more)).message).toBe(`${more}: line 3: 4 fields, the header has 3`);
    const fewer = await file('.csv', `account_id,ts,label\n"a\nb",${T0},1\n\nc,${T0}\n`);
    expect((await labelsError(fewer)).message).toBe(`${fewer}: line 5: 2 fields, the header has 3`);
  });

  it('names the line of malformed CSV', async () => {
    const unclosed = await file('.csv', `account_id,ts\na,${T0}\n"b,${T0}\n`);
    expect((await labelsError(unclosed)).message).toMatch(new RegExp(`^${escape(unclosed)}: line 3: not valid CSV: `));
    const stray = await file('.csv', `account_id,ts\na,${T0}\nb"x",${T0}\n`);
    expect((await labelsError(stray)).message).toMatch(/: line 3: not valid CSV: /);
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('readLabels (Parquet)', () => {
  it('reads a labels file written with hyparquet-writer: timestamps, int64 and nulls in label columns', async () => {
    const columnData: ColumnSource[] = [
      { name: 'account_id', data: ['a', 'b', 'c'], type: 'STRING' },
      { name: 'ts', data: [new Date(T0), new Date(T0 + 1), new Date(T0 + 2)], type: 'TIMESTAMP' },
      { name: 'label', data: [1, 0, null], type: 'INT32' },
      { name: 'amount', data: [1.5, null, 3], type: 'DOUBLE' },
      { name: 'big', data: [1n, 2n ** 60n, null], type: 'INT64' },
      { name: 'when', data: [new Date(5), null, new Date(7)], type: 'TIMESTAMP' },
    ];
    const path = await file('.parquet', parquetWriteBuffer({ columnData }));
    const t = await readLabels(path, ['account_id']);
    expect(t.columns).toEqual(['account_id', 'ts', 'label', 'amount', 'big', 'when']);
    expect(t.ts).toEqual([T0, T0 + 1, T0 + 2]);
    expect(t.rows).toEqual([
      ['a', T0, 1, 1.5, 1, 5],
      ['b', T0 + 1, 0, null, 2n ** 60n, null], // an unsafe bigint stays a bigint
      ['c', T0 + 2, null, 3, null, 7],
    ]);
  });

  it('reads ts as INT64 epoch ms or ISO strings, and gzip-compressed files', async () => {
    const int64 = await file('.parquet', parquetWriteBuffer({ columnData: [
      { name: 'ts', data: [BigInt(T0), BigInt(T0 + 9)], type: 'INT64' },
      { name: 'account_id', data: [7, 8], type: 'INT32' },
    ] }));
    const a = await readLabels(int64, ['account_id']);
    expect(a.ts).toEqual([T0, T0 + 9]);
    expect(a.rows).toEqual([[T0, 7], [T0 + 9, 8]]);

    const iso = await file('.parquet', parquetWriteBuffer({
      codec: 'GZIP',
      compressors: { GZIP: (input: Uint8Array) => new Uint8Array(gzipSync(input)) },
      columnData: [
        { name: 'account_id', data: ['x', 'y'], type: 'STRING' },
        { name: 'ts', data: ['2024-05-01T12:00:00Z', `${T0 + 5}`], type: 'STRING' },
      ],
    }));
    const b = await readLabels(iso, ['account_id']);
    expect(b.ts).toEqual([T0, T0 + 5]);
  });

  it('names missing columns, empty keys and bad ts by row', async () => {
    const noKey = await file('.parquet', parquetWriteBuffer({ columnData: [{ name: 'ts', data: [BigInt(T0)], type: 'INT64' }] }));
    expect((await labelsError(noKey)).message).toBe(`${noKey}: schema: missing column "account_id" (columns found: ts)`);

    const nullKey = await file('.parquet', parquetWriteBuffer({ columnData: [
      { name: 'account_id', data: ['a', 'b', null], type: 'STRING' },
      { name: 'ts', data: [BigInt(T0), BigInt(T0), BigInt(T0)], type: 'INT64' },
    ] }));
    expect((await labelsError(nullKey)).message).toBe(`${nullKey}: row 3: column "account_id" is empty (an entity key needs a value)`);

    const badTs = await file('.parquet', parquetWriteBuffer({ columnData: [
      { name: 'account_id', data: ['a', 'b'], type: 'STRING' },
      { name: 'ts', data: [T0, 1.25], type: 'DOUBLE' },
    ] }));
    expect((await labelsError(badTs)).message).toBe(`${badTs}: row 2: column "ts" value 1.25 is neither epoch milliseconds (a safe integer) nor an ISO 8601 date or date-time`);

    const notParquet = await file('.parquet', 'account_id,ts\n');
    expect((await labelsError(notParquet)).message).toContain(`${notParquet}: not a readable Parquet file: `);
  });
});

const OUT_COLUMNS: OutputColumn[] = [
  { name: 'account_id', type: 'string' },
  { name: 'amount_sum_1h', type: 'double' },
  { name: 'txn_count_24h', type: 'long' },
];

describe('writeTable', () => {
  it('writes Parquet with nullable UTF8, DOUBLE and INT64 columns that hyparquet reads back', async () => {
    const path = join(dir, 'nested', 'deeper', 'out.parquet');
    const rows = [
      ['a', 1.5, 3],
      [null, null, null],
      ['c, "quoted"', undefined, 2n ** 62n],
      ['', -0.25, -7],
    ];
    expect(await writeTable(path, OUT_COLUMNS, rows)).toBe(4);
    const buffer = await asyncBufferFromFile(path);
    const metadata = await parquetMetadataAsync(buffer);
    expect(metadata.num_rows).toBe(4n);
    expect(metadata.schema.slice(1).map((e) => [e.name, e.type, e.converted_type, e.repetition_type])).toEqual([
      ['account_id', 'BYTE_ARRAY', 'UTF8', 'OPTIONAL'],
      ['amount_sum_1h', 'DOUBLE', undefined, 'OPTIONAL'],
      ['txn_count_24h', 'INT64', undefined, 'OPTIONAL'],
    ]);
    expect(await parquetReadObjects({ file: buffer })).toEqual([
      { account_id: 'a', amount_sum_1h: 1.5, txn_count_24h: 3n },
      { account_id: null, amount_sum_1h: null, txn_count_24h: null },
      { account_id: 'c, "quoted"', amount_sum_1h: null, txn_count_24h: 2n ** 62n },
      { account_id: '', amount_sum_1h: -0.25, txn_count_24h: -7n },
    ]);
  });

  it('writes an empty Parquet table and a labels round trip through Parquet', async () => {
    const empty = join(dir, 'empty.parquet');
    expect(await writeTable(empty, OUT_COLUMNS, [])).toBe(0);
    expect(await parquetReadObjects({ file: await asyncBufferFromFile(empty) })).toEqual([]);

    const labels = join(dir, 'labels-out.parquet');
    await writeTable(labels, [{ name: 'account_id', type: 'string' }, { name: 'ts', type: 'long' }, { name: 'label', type: 'long' }], [
      ['a', T0, 1],
      ['b', String(T0 + 1), '0'],
    ]);
    const t = await readLabels(labels, ['account_id']);
    expect(t).toEqual({ columns: ['account_id', 'ts', 'label'], rows: [['a', T0, 1], ['b', T0 + 1, 0]], ts: [T0, T0 + 1] });
  });

  it('writes CSV with RFC 4180 quoting that csv-parse reads back exactly', async () => {
    const path = join(dir, 'made', 'out.csv');
    const nasty = ['plain', 'a,b', 'say "hi"', 'line\nbreak', 'cr\r\nlf', ' padded ', '"', ',', 'ünïcödé ✓'];
    const rows: unknown[][] = nasty.map((s, i) => [s, i / 4, i - 3]);
    rows.push([null, null, null], [undefined, Number.NaN, 2n ** 62n]);
    expect(await writeTable(path, [{ name: 'id, "x"', type: 'string' }, OUT_COLUMNS[1] as OutputColumn, OUT_COLUMNS[2] as OutputColumn], rows)).toBe(rows.length);
    const text = await readFile(path, 'utf8');
    expect(text.startsWith('"id, ""x""",amount_sum_1h,txn_count_24h\n')).toBe(true);
    expect(text).toContain('\n"say ""hi""",0.5,-1\n');
    const parsed = parseCsvSync(text) as string[][];
    expect(parsed[0]).toEqual(['id, "x"', 'amount_sum_1h', 'txn_count_24h']);
    expect(parsed.slice(1)).toEqual([
      ...nasty.map((s, i) => [s, String(i / 4), String(i - 3)]),
      ['', '', ''],
      ['', 'NaN', String(2n ** 62n)],
    ]);
  });

  it('converts values to the column type the same way for both formats, and refuses what does not fit', async () => {
    const cols: OutputColumn[] = [{ name: 's', type: 'string' }, { name: 'd', type: 'double' }, { name: 'l', type: 'long' }];
    const path = join(dir, 'conv.csv');
    await writeTable(path, cols, [
      [12, '2.5', '42'],
      [true, 7n, 9n],
      [new Date(T0), '', ''],
    ]);
    expect(await readFile(path, 'utf8')).toBe(`s,d,l\n12,2.5,42\ntrue,7,9\n2024-05-01T12:00:00.000Z,,\n`);
    for (const ext of ['.csv', '.parquet']) {
      await expect(writeTable(join(dir, `bad1${ext}`), cols, [['a', 'abc', 1]])).rejects.toThrow(/row 1, column "d" \(double\): cannot write "abc"/);
      await expect(writeTable(join(dir, `bad2${ext}`), cols, [['a', 1, 1], ['b', 2, 1.5]])).rejects.toThrow(/row 2, column "l" \(long\): cannot write 1.5/);
      await expect(writeTable(join(dir, `bad3${ext}`), cols, [['a', 1]])).rejects.toThrow(/row 1 has 2 values for 3 columns/);
      await expect(writeTable(join(dir, `bad4${ext}`), cols, [['a', 1, 2n ** 63n]])).rejects.toThrow(/outside INT64/);
      // a failed write leaves nothing behind, not even the temporary file
      await expect(stat(join(dir, `bad1${ext}`))).rejects.toThrow(/ENOENT/);
    }
    const leftovers = (await import('node:fs')).readdirSync(dir).filter((f) => f.endsWith('.tmp'));
    expect(leftovers).toEqual([]);
  });

  it('refuses an unknown extension and duplicate columns as usage errors', async () => {
    for (const bad of ['out.json', 'out', 'out.csv.gz']) {
      await expect(writeTable(join(dir, bad), OUT_COLUMNS, [])).rejects.toMatchObject({ code: 'FABRIC_CLI_USAGE' });
    }
    await expect(writeTable(join(dir, 'dup.csv'), [OUT_COLUMNS[0] as OutputColumn, OUT_COLUMNS[0] as OutputColumn], [])).rejects.toMatchObject({ code: 'FABRIC_CLI_USAGE' });
  });

  it('quotes exactly the fields that need it', () => {
    expect(csvField('abc')).toBe('abc');
    expect(csvField('')).toBe('');
    expect(csvField('a"b')).toBe('"a""b"');
    expect(csvField('a\rb')).toBe('"a\rb"');
  });
});

describe('100,000 rows', () => {
  it('reads and writes a large table in CSV and Parquet', async () => {
    const n = 100_000;
    const lines = ['account_id,ts,label,note'];
    for (let i = 0; i < n; i++) lines.push(`acc-${i % 977},${T0 + i},${i % 2},${i % 10 === 0 ? '"x, y"' : 'n'}`);
    const labelsPath = await file('.csv', `${lines.join('\n')}\n`);

    const t = await readLabels(labelsPath, ['account_id']);
    expect(t.rows).toHaveLength(n);
    expect(t.ts[n - 1]).toBe(T0 + n - 1);
    expect(t.rows[10]).toEqual(['acc-10', String(T0 + 10), '0', 'x, y']);

    const columns: OutputColumn[] = [
      { name: 'account_id', type: 'string' },
      { name: 'ts', type: 'long' },
      { name: 'label', type: 'long' },
      { name: 'note', type: 'string' },
      { name: 'amount_sum_1h', type: 'double' },
      { name: 'txn_count_24h', type: 'long' },
    ];
    function* out(): Generator<unknown[]> {
      for (let i = 0; i < n; i++) {
        const r = t.rows[i] as readonly unknown[];
        yield [r[0], t.ts[i], r[2], r[3], i % 7 === 0 ? null : i * 0.5, i % 11 === 0 ? null : i];
      }
    }
    const csvPath = join(dir, 'big', 'out.csv');
    const parquetPath = join(dir, 'big', 'out.parquet');
    expect(await writeTable(csvPath, columns, out())).toBe(n);
    expect(await writeTable(parquetPath, columns, out())).toBe(n);

    const back = await readLabels(csvPath, ['account_id']);
    expect(back.rows).toHaveLength(n);
    expect(back.ts).toEqual(t.ts);
    const pq = await readLabels(parquetPath, ['account_id']);
    expect(pq.rows).toHaveLength(n);
    expect(pq.ts).toEqual(t.ts);
    expect(pq.rows[7]).toEqual(['acc-7', T0 + 7, 1, 'n', null, 7]);
    expect(pq.rows[22]).toEqual(['acc-22', T0 + 22, 0, 'n', 11, null]);
  });
});
