/**
 * Derives a variant of a model artifact for experiments, without a training run: `inverted` swaps the
 * two class probabilities (the score becomes 1 - p: a model much worse than its source), by appending
 * a Gather node to the ONNX graph and naming its output the model's new output. The folder written
 * holds model.onnx and a model.json (the source's manifest with the new version and output).
 *
 *   npx tsx scripts/model-variant.ts --from models/fraud --to /tmp/fraud-inverted --version 0.9.0-inverted
 *   npx fabric models register --artifact /tmp/fraud-inverted
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';

function varint(n: number | bigint): Buffer {
  let v = BigInt(n);
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return Buffer.from(out);
}

function field(no: number, wire: 0 | 2, payload: Buffer | number | bigint): Buffer {
  const key = varint((no << 3) | wire);
  if (wire === 0) return Buffer.concat([key, varint(payload as number)]);
  const bytes = payload as Buffer;
  return Buffer.concat([key, varint(bytes.length), bytes]);
}

const str = (no: number, s: string): Buffer => field(no, 2, Buffer.from(s, 'utf8'));

/** Reads a varint at `at`: [value, next offset]. */
function readVarint(buf: Buffer, at: number): [number, number] {
  let result = 0;
  let shift = 0;
  let i = at;
  for (;;) {
    const b = buf[i++]!;
    result += (b & 0x7f) * 2 ** shift;
    if (!(b & 0x80)) return [result, i];
    shift += 7;
  }
}

/** Splits a protobuf message into its top-level fields (number, wire type, raw bytes of the whole field). */
function fields(buf: Buffer): { no: number; wire: number; start: number; end: number; payloadStart: number }[] {
  const out: { no: number; wire: number; start: number; end: number; payloadStart: number }[] = [];
  let i = 0;
  while (i < buf.length) {
    const start = i;
    const [key, afterKey] = readVarint(buf, i);
    const no = Math.floor(key / 8);
    const wire = key & 7;
    let end: number;
    let payloadStart = afterKey;
    if (wire === 0) end = readVarint(buf, afterKey)[1];
    else if (wire === 1) end = afterKey + 8;
    else if (wire === 5) end = afterKey + 4;
    else if (wire === 2) {
      const [len, afterLen] = readVarint(buf, afterKey);
      payloadStart = afterLen;
      end = afterLen + len;
    } else throw new Error(`unsupported wire type ${wire}`);
    out.push({ no, wire, start, end, payloadStart });
    i = end;
  }
  return out;
}

/** An ONNX model whose output `outputName` is `source`'s two class columns swapped. */
export function invertedModel(onnx: Buffer, source: string, outputName: string): Buffer {
  const top = fields(onnx);
  const graph = top.find((f) => f.no === 7 && f.wire === 2);
  if (!graph) throw new Error('not an ONNX model: no graph');
  const index = Buffer.concat([field(1, 0, 2), field(2, 0, 7), field(7, 2, Buffer.concat([varint(1), varint(0)])), str(8, `${outputName}_index`)]);
  const axis = Buffer.concat([str(1, 'axis'), field(20, 0, 2), field(3, 0, 1)]);
  const node = Buffer.concat([str(1, source), str(1, `${outputName}_index`), str(2, outputName), str(3, `${outputName}_gather`), str(4, 'Gather'), field(5, 2, axis)]);
  const dim = (d: Buffer): Buffer => field(1, 2, d);
  const shape = Buffer.concat([dim(str(2, 'N')), dim(field(1, 0, 2))]);
  const type = field(1, 2, Buffer.concat([field(1, 0, 1), field(2, 2, shape)]));
  const output = Buffer.concat([str(1, outputName), field(2, 2, type)]);
  const body = Buffer.concat([onnx.subarray(graph.payloadStart, graph.end), field(1, 2, node), field(5, 2, index), field(12, 2, output)]);
  return Buffer.concat([onnx.subarray(0, graph.start), field(7, 2, body), onnx.subarray(graph.end)]);
}

/** Writes the inverted variant of a model folder (model.onnx + model.json) under a new version. */
export async function writeInvertedVariant(from: string, to: string, version: string): Promise<string> {
  const manifest = JSON.parse(await readFile(join(from, 'model.json'), 'utf8')) as Record<string, unknown>;
  const output = `${String(manifest.output_name ?? 'probabilities')}_inverted`;
  const bytes = invertedModel(await readFile(join(from, String(manifest.file ?? 'model.onnx'))), String(manifest.output_name ?? 'probabilities'), output);
  await mkdir(to, { recursive: true });
  await writeFile(join(to, 'model.onnx'), bytes);
  // The source's validation metrics are not this model's: they are left out (the reference profile of its inputs stays).
  const { sha256: _old, metrics: _metrics, ...rest } = manifest;
  await writeFile(join(to, 'model.json'), `${JSON.stringify({ ...rest, version, file: 'model.onnx', output_name: output, sha256: createHash('sha256').update(bytes).digest('hex'), description: `${String(manifest.name)}@${String(manifest.version)} with its class probabilities swapped (score 1 - p): a deliberately worse model for experiments` }, null, 2)}\n`);
  return to;
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\/scripts\//, '/scripts/'))) {
  const { values } = parseArgs({ options: { from: { type: 'string' }, to: { type: 'string' }, version: { type: 'string' } } });
  if (!values.from || !values.to || !values.version) {
    process.stderr.write('usage: tsx scripts/model-variant.ts --from <model folder> --to <folder> --version <version>\n');
    process.exit(2);
  }
  process.stdout.write(`${await writeInvertedVariant(values.from, values.to, values.version)}\n`);
}
