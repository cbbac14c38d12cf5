/** Messages between the serving engine and its ONNX worker processes (advanced IPC serialization). */

/** One model version as a worker loads it. `key` names it in later run requests. */
export interface ModelSpec {
  readonly key: string;
  /** The ONNX file's bytes (a single-file model)... */
  readonly bytes?: Uint8Array;
  /** ...or its path in the model store (a model with external data files beside it). */
  readonly path?: string;
  readonly inputName: string;
  readonly outputName: string;
  readonly width: number;
  readonly positiveClassIndex: number;
  /** Tried in order; the first that loads is used and reported. */
  readonly providers: readonly string[];
  readonly threads: number;
  readonly spinning: boolean;
}

export interface InputInfo {
  readonly name: string;
  readonly type: string;
  /** -1 for a symbolic (batch) dimension. */
  readonly shape: readonly number[];
}

export type WorkerMessage =
  | { readonly load: ModelSpec }
  | { readonly unload: string }
  | { readonly fault: 'exit' | 'throw' | 'hang' }
  | { readonly id: number; readonly key: string; readonly rows: Float32Array; readonly n: number };

export type LoadReply =
  | { readonly loaded: string; readonly provider: string; readonly inputs: readonly InputInfo[]; readonly outputs: readonly string[] }
  | { readonly loaded: string; readonly error: string };

export type RunReply = { readonly id: number; readonly scores: Float32Array } | { readonly id: number; readonly error: string; readonly unavailable?: boolean };
