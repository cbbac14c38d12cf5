import protobuf from 'protobufjs/minimal.js';

/**
 * Finds every external-data location an ONNX model refers to, without loading it: tensors whose bytes
 * live in a file beside the model (TensorProto.external_data "location"). Walks the protobuf wire
 * format of ModelProto -> GraphProto (initializers, sparse initializers, node attributes, and the
 * subgraphs of If/Loop/Scan nodes) and the model's local functions. Field numbers from onnx.proto3.
 *
 * A truncated or corrupt file throws (protobufjs' reader checks every length against the buffer).
 */
export function externalDataLocations(bytes: Uint8Array): string[] {
  const out = new Set<string>();
  const reader = protobuf.Reader.create(bytes);
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    const field = tag >>> 3;
    if (field === 7 && (tag & 7) === 2) graph(sub(reader), out, 0); // ModelProto.graph
    else if (field === 25 && (tag & 7) === 2) fn(sub(reader), out, 0); // ModelProto.functions
    else reader.skipType(tag & 7);
  }
  return [...out];
}

const MAX_DEPTH = 64;

function sub(reader: protobuf.Reader): protobuf.Reader {
  const len = reader.uint32();
  const start = reader.pos;
  if (start + len > reader.len) throw new Error(`truncated protobuf: a field of ${len} bytes at ${start} passes the end (${reader.len})`);
  reader.pos += len;
  return protobuf.Reader.create(reader.buf.subarray(start, start + len));
}

function walk(reader: protobuf.Reader, visit: (field: number, r: protobuf.Reader) => boolean): void {
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if ((tag & 7) === 2 && visit(tag >>> 3, reader)) continue;
    reader.skipType(tag & 7);
  }
}

function guard(depth: number): void {
  if (depth > MAX_DEPTH) throw new Error(`ONNX graph nesting deeper than ${MAX_DEPTH}`);
}

function graph(reader: protobuf.Reader, out: Set<string>, depth: number): void {
  guard(depth);
  walk(reader, (field, r) => {
    if (field === 5) tensor(sub(r), out); // initializer
    else if (field === 15) sparse(sub(r), out); // sparse_initializer
    else if (field === 1) node(sub(r), out, depth + 1); // node
    else return false;
    return true;
  });
}

function fn(reader: protobuf.Reader, out: Set<string>, depth: number): void {
  guard(depth);
  walk(reader, (field, r) => {
    if (field !== 7) return false; // FunctionProto.node
    node(sub(r), out, depth + 1);
    return true;
  });
}

function node(reader: protobuf.Reader, out: Set<string>, depth: number): void {
  guard(depth);
  walk(reader, (field, r) => {
    if (field !== 5) return false; // NodeProto.attribute
    attribute(sub(r), out, depth + 1);
    return true;
  });
}

function attribute(reader: protobuf.Reader, out: Set<string>, depth: number): void {
  guard(depth);
  walk(reader, (field, r) => {
    if (field === 5 || field === 10) tensor(sub(r), out); // t, tensors
    else if (field === 6 || field === 11) graph(sub(r), out, depth + 1); // g, graphs
    else if (field === 22 || field === 23) sparse(sub(r), out); // sparse_tensor(s)
    else return false;
    return true;
  });
}

function sparse(reader: protobuf.Reader, out: Set<string>): void {
  walk(reader, (field, r) => {
    if (field !== 1 && field !== 2) return false; // values, indices
    tensor(sub(r), out);
    return true;
  });
}

function tensor(reader: protobuf.Reader, out: Set<string>): void {
  walk(reader, (field, r) => {
    if (field !== 13) return false; // TensorProto.external_data: StringStringEntryProto
    let key = '';
    let value = '';
    walk(sub(r), (f, e) => {
      if (f === 1) key = e.string();
      else if (f === 2) value = e.string();
      else return false;
      return true;
    });
    if (key === 'location') out.add(value);
    return true;
  });
}
