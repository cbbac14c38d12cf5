import { createHash } from 'node:crypto';
import { copyFile, lstat, mkdir, readFile, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, isAbsolute, join, normalize, relative, resolve, sep } from 'node:path';
import { FabricError, messageOf } from '../../topology/errors.js';
import { externalDataLocations } from './onnx-scan.js';

/** One file of an artifact, by its path inside the artifact folder. */
export interface ArtifactFile {
  readonly path: string;
  readonly sha256: string;
  readonly size: number;
}

/** What the registry records about an artifact: its address in the store and every file's hash. */
export interface ArtifactRef {
  /** sha256 of the main ONNX file: the artifact's content address. */
  readonly sha256: string;
  readonly size: number;
  /** `store:sha256/<hex>`: where the store keeps it (resolved by whichever store the reader uses). */
  readonly uri: string;
  /** The main ONNX file's path inside the artifact. */
  readonly file: string;
  /** Every file (the main one and its external data), hashed. */
  readonly files: readonly ArtifactFile[];
}

/** A verified artifact ready for the engine: the main file's bytes, or its path when it has external data. */
export interface FetchedArtifact {
  readonly ref: ArtifactRef;
  readonly bytes: Buffer;
  /** Set when the model has external data files: the engine loads from this path so they resolve beside it. */
  readonly path?: string;
}

/**
 * A content-addressed store of model artifacts. The local folder is the default; an object store
 * (S3, GCS) implements the same three calls over its own keys.
 */
export interface ModelStore {
  /** Copies a model file or folder in (idempotent: same bytes, same address) and returns its reference. */
  put(source: string): Promise<ArtifactRef>;
  /**
   * Reads an artifact back and verifies it: every file's sha256, no symlinks, no external-data path
   * outside the artifact. FABRIC_MODEL_INVALID when the bytes are wrong, FABRIC_MODEL_STORE_UNAVAILABLE
   * when the store cannot be read (retriable).
   */
  fetch(ref: ArtifactRef): Promise<FetchedArtifact>;
  readonly description: string;
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Checks the external-data locations of an ONNX file: relative, inside the artifact folder once
 * normalized, and among the artifact's files. Known CVEs in ONNX tooling read arbitrary files through
 * `../` or absolute locations; ONNX Runtime is never handed such a model.
 */
export function checkExternalData(label: string, main: string, bytes: Uint8Array, files: ReadonlySet<string>): string[] {
  let locations: string[];
  try {
    locations = externalDataLocations(bytes);
  } catch (err) {
    throw new FabricError('FABRIC_MODEL_INVALID', `${label}: ${main} is not a readable ONNX model: ${messageOf(err)}`, { cause: err });
  }
  const mainDir = normalize(join(main, '..'));
  for (const location of locations) {
    const inside = normalize(join(mainDir, location));
    if (isAbsolute(location) || location.includes('\0') || inside.split(sep)[0] === '..' || isAbsolute(inside)) {
      throw new FabricError('FABRIC_MODEL_INVALID', `${label}: external data location ${JSON.stringify(location)} escapes the model folder`);
    }
    if (!files.has(inside)) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: external data file ${JSON.stringify(location)} is not part of the artifact`);
  }
  return locations;
}

/** Where a single-file model is kept in its artifact folder. */
const CANONICAL_FILE = 'model.onnx';

/** The local folder store: `<root>/sha256/<hex>/<files>`, written once (temp folder, then rename). */
export class LocalModelStore implements ModelStore {
  readonly description: string;

  constructor(private readonly root: string) {
    this.description = `local folder ${root}`;
  }

  async put(source: string): Promise<ArtifactRef> {
    const label = `artifact ${source}`;
    const st = await lstat(source).catch((err: Error) => {
      throw new FabricError('FABRIC_MODEL_INVALID', `${label}: ${err.message}`, { cause: err });
    });
    if (st.isSymbolicLink()) throw new FabricError('FABRIC_MODEL_INVALID', `${label} is a symlink; register the file it points to`);
    let dir: string;
    let names: string[];
    let main: string;
    if (st.isDirectory()) {
      dir = source;
      names = await listFiles(source, label);
      const onnx = names.filter((n) => n.endsWith('.onnx'));
      if (onnx.length !== 1) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: a model folder holds exactly one .onnx file, found ${onnx.length}${onnx.length ? ` (${onnx.join(', ')})` : ''}`);
      main = onnx[0]!;
    } else if (st.isFile()) {
      dir = resolve(source, '..');
      main = basename(source);
      names = [main];
    } else throw new FabricError('FABRIC_MODEL_INVALID', `${label} is neither a file nor a folder`);
    const files: ArtifactFile[] = [];
    const contents = new Map<string, Buffer>();
    for (const name of names) {
      const bytes = await readFile(join(dir, name));
      contents.set(name, bytes);
      files.push({ path: name, sha256: sha256(bytes), size: bytes.length });
    }
    const mainBytes = contents.get(main)!;
    const locations = checkExternalData(label, main, mainBytes, new Set(names));
    // A folder's other files are kept only when the model refers to them (manifests and notes stay out).
    let kept = st.isDirectory() ? files.filter((f) => f.path === main || locations.some((l) => normalize(join(main, '..', l)) === f.path)) : files;
    // Store path -> source path. A model without external data is stored as model.onnx whatever its
    // source name: its address is its bytes' hash, so the same bytes registered from another file name
    // (a new version of the same model) find the same artifact.
    const sources = new Map(kept.map((f) => [f.path, join(dir, f.path)]));
    if (kept.length === 1) {
      sources.clear();
      sources.set(CANONICAL_FILE, join(dir, main));
      kept = [{ ...kept[0]!, path: CANONICAL_FILE }];
      main = CANONICAL_FILE;
    }
    const ref: ArtifactRef = { sha256: sha256(mainBytes), size: mainBytes.length, uri: `store:sha256/${artifactAddress(main, kept)}`, file: main, files: kept };
    const target = this.folder(addressOf(ref));
    if (await exists(target)) {
      await this.fetch(ref); // already stored: make sure it is intact
      return ref;
    }
    const tmp = `${target}.tmp-${process.pid}-${Date.now()}`;
    await mkdir(tmp, { recursive: true });
    try {
      for (const f of kept) {
        await mkdir(join(tmp, f.path, '..'), { recursive: true });
        await copyFile(sources.get(f.path)!, join(tmp, f.path));
      }
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      if (!(await exists(target))) throw new FabricError('FABRIC_MODEL_STORE_UNAVAILABLE', `model store ${this.root}: cannot write ${ref.uri}: ${messageOf(err)}`, { cause: err });
    }
    return ref;
  }

  async fetch(ref: ArtifactRef): Promise<FetchedArtifact> {
    const label = `artifact ${ref.uri}`;
    if (!/^[0-9a-f]{64}$/.test(ref.sha256)) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: malformed sha256 ${JSON.stringify(ref.sha256)}`);
    for (const f of ref.files) if (isAbsolute(f.path) || normalize(f.path).split(sep)[0] === '..') throw new FabricError('FABRIC_MODEL_INVALID', `${label}: file ${f.path} escapes the artifact folder`);
    if (addressOf(ref) !== artifactAddress(ref.file, ref.files)) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: the address does not match the artifact's files`);
    const dir = this.folder(addressOf(ref));
    const rootReal = await realpath(this.root).catch((err: Error) => {
      throw new FabricError('FABRIC_MODEL_STORE_UNAVAILABLE', `model store ${this.root} cannot be read: ${err.message}`, { cause: err });
    });
    const contents = new Map<string, Buffer>();
    for (const f of ref.files) {
      const path = join(dir, f.path);
      if (relative(dir, path).startsWith('..') || isAbsolute(f.path)) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: file ${f.path} escapes the artifact folder`);
      const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') throw new FabricError('FABRIC_MODEL_STORE_UNAVAILABLE', `${label}: ${f.path} is missing from the model store (${this.description})`, { cause: err });
        throw new FabricError('FABRIC_MODEL_STORE_UNAVAILABLE', `${label}: ${err.message}`, { cause: err });
      });
      if (st.isSymbolicLink()) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: ${f.path} is a symlink; the store holds regular files only`);
      const real = await realpath(path);
      if (!real.startsWith(rootReal + sep)) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: ${f.path} resolves outside the model store`);
      const bytes = await readFile(path).catch((err: Error) => {
        throw new FabricError('FABRIC_MODEL_STORE_UNAVAILABLE', `${label}: ${err.message}`, { cause: err });
      });
      const digest = sha256(bytes);
      if (digest !== f.sha256) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: ${f.path} has sha256 ${digest}, the registry pins ${f.sha256}`);
      contents.set(f.path, bytes);
    }
    const bytes = contents.get(ref.file);
    if (!bytes) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: main file ${ref.file} is not among its files`);
    if (sha256(bytes) !== ref.sha256) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: ${ref.file} does not match the artifact address`);
    const locations = checkExternalData(label, ref.file, bytes, new Set(contents.keys()));
    return locations.length > 0 ? { ref, bytes, path: join(dir, ref.file) } : { ref, bytes };
  }

  private folder(hex: string): string {
    return join(this.root, 'sha256', hex);
  }
}

/**
 * The content address: the main file's sha256 for a single-file model; for a model with external data,
 * the sha256 of its file list (path and sha256 of each, sorted), so the same graph with other weights
 * is another artifact.
 */
export function artifactAddress(main: string, files: readonly ArtifactFile[]): string {
  if (files.length === 1 && files[0]!.path === main) return files[0]!.sha256;
  return sha256(Buffer.from(JSON.stringify([...files].sort((a, b) => (a.path < b.path ? -1 : 1)).map((f) => [f.path, f.sha256]))));
}

function addressOf(ref: ArtifactRef): string {
  const m = /^store:sha256\/([0-9a-f]{64})$/.exec(ref.uri);
  if (!m) throw new FabricError('FABRIC_MODEL_INVALID', `artifact uri ${JSON.stringify(ref.uri)} is not store:sha256/<hex>`);
  return m[1]!;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Regular files under a folder (relative paths); symlinks refused. */
async function listFiles(dir: string, label: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isSymbolicLink()) throw new FabricError('FABRIC_MODEL_INVALID', `${label}: ${rel} is a symlink; an artifact holds regular files only`);
    if (entry.isDirectory()) out.push(...(await listFiles(dir, label, rel)));
    else if (entry.isFile()) out.push(rel);
  }
  return out.sort();
}
