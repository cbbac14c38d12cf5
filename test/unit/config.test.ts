import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../topology/config.js';
import { isFabricError } from '../../topology/errors.js';

describe('configuration', () => {
  it('has working defaults and is frozen', () => {
    const c = loadConfig({});
    expect(c.gatewayPort).toBe(8080);
    expect(c.kafkaBrokers).toBe('127.0.0.1:9092');
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('says which variable is wrong and how to fix it', () => {
    try {
      loadConfig({ FABRIC_GATEWAY_PORT: 'eighty', FABRIC_SCORING_PROVIDER: 'tpu' });
      expect.unreachable();
    } catch (err) {
      expect(isFabricError(err, 'FABRIC_CONFIG_INVALID')).toBe(true);
      expect((err as Error).message).toContain('FABRIC_GATEWAY_PORT="eighty"');
      expect((err as Error).message).toContain('FABRIC_SCORING_PROVIDER="tpu"');
      expect((err as Error).message).toContain('Default: "8080"');
    }
  });
});
