import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ModelVersion } from '../../schemas/types.generated.js';
import { entryFor, parseManifest } from '../../serving/registry/entry.js';
import { sha256 } from '../../serving/registry/store.js';

const MODELS = fileURLToPath(new URL('../../models', import.meta.url));

/** A demo model's registry entry (as `fabric models register` would make it) and its ONNX bytes, without Kafka. */
export function demoModel(name: 'fraud' | 'recs', now = Date.UTC(2024, 0, 1)): { entry: ModelVersion; bytes: Buffer } {
  const manifest = parseManifest(JSON.parse(readFileSync(`${MODELS}/${name}/model.json`, 'utf8')), `models/${name}/model.json`);
  const bytes = readFileSync(`${MODELS}/${name}/${manifest.file}`);
  const hex = sha256(bytes);
  const entry = entryFor(manifest, { sha256: hex, size: bytes.length, uri: `store:sha256/${hex}`, file: manifest.file, files: [{ path: manifest.file, sha256: hex, size: bytes.length }] }, { registeredBy: 'test', now });
  return { entry, bytes };
}

/** What the engine needs to load an entry from its bytes. */
export function loadable(entry: ModelVersion, bytes: Uint8Array) {
  return { name: entry.name, version: entry.version, bytes, inputName: entry.signature.input_name, outputName: entry.signature.output_name, positiveClassIndex: entry.signature.positive_class_index, inputs: entry.signature.inputs.map((i) => i.name) };
}
