import { FabricError } from '../../topology/errors.js';

/**
 * A request body as a list of events: one JSON object, a JSON array, or NDJSON (one JSON value per
 * line; chosen by content type, or when the body is not one JSON document but has several lines).
 */
export function parseEvents(body: string, contentType: string | undefined): unknown[] {
  const text = body.trim();
  if (text.length === 0) throw new FabricError('FABRIC_HTTP_MALFORMED', 'empty body: send a JSON object, a JSON array or NDJSON');
  const ndjson = contentType !== undefined && /ndjson|jsonl|json-seq/i.test(contentType);
  if (!ndjson) {
    try {
      const value: unknown = JSON.parse(text);
      return Array.isArray(value) ? value : [value];
    } catch (err) {
      if (!text.includes('\n')) throw new FabricError('FABRIC_HTTP_MALFORMED', `body is not valid JSON: ${(err as Error).message}`);
    }
  }
  const events: unknown[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line.length === 0) continue;
    try {
      events.push(JSON.parse(line));
    } catch (err) {
      throw new FabricError('FABRIC_HTTP_MALFORMED', `NDJSON line ${i + 1} is not valid JSON: ${(err as Error).message}`);
    }
  }
  return events;
}
