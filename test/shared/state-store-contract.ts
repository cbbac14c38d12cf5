import { describe, expect, it } from 'vitest';
import type { PartitionStateStore } from '../../topology/runtime/state-store.js';
import { isFabricError } from '../../topology/errors.js';

const task = { group: 'g', topic: 't', partition: 0 };

/** The contract every PartitionStateStore passes (memory in unit tests, Redis in integration tests). */
export function stateStoreContract(name: string, make: () => Promise<PartitionStateStore>): void {
  describe(`${name}: task state versioned by input position`, () => {
  it('a batch whose transaction aborted leaves nothing its redo would see', async () => {
    const store = await make();
    const claim = await store.claim('p', task);
    expect(await store.load('p', task, '0')).toBeNull();
    await store.save('p', task, claim, '0', '10', 'as of 10');
    await store.save('p', task, claim, '10', '20', 'as of 20 (aborted)');
    // The redo starts at 10 again: it sees the state as of 10, not the aborted one.
    expect(await store.load('p', task, '10')).toBe('as of 10');
    // It may end elsewhere (other batch boundaries) and replaces the aborted version.
    await store.save('p', task, claim, '10', '15', 'as of 15');
    expect(await store.load('p', task, '15')).toBe('as of 15');
    // A commit marker between batches: the next batch starts past the saved position.
    expect(await store.load('p', task, '16')).toBe('as of 15');
  });

  it('refuses a save from an owner that lost the partition (zombie) with FABRIC_STATE_FENCED', async () => {
    const store = await make();
    const zombie = await store.claim('p', task);
    const owner = await store.claim('p', task);
    await store.save('p', task, owner, '0', '5', 'owner');
    const err = await store.save('p', task, zombie, '0', '7', 'zombie').catch((e: unknown) => e);
    expect(isFabricError(err, 'FABRIC_STATE_FENCED')).toBe(true);
    expect(await store.load('p', task, '5')).toBe('owner');
  });

  it('redoes an aborted first batch from the empty state, and knows nothing before it', async () => {
    const store = await make();
    const claim = await store.claim('p', task);
    await store.save('p', task, claim, '100', '110', 'aborted first batch');
    expect(await store.load('p', task, '100')).toBeNull();
    await store.save('p', task, claim, '100', '105', 'redo');
    expect(await store.load('p', task, '105')).toBe('redo');
    await expect(store.load('p', task, '99')).rejects.toThrow(/but the batch starts at 99/);
  });

  it('refuses to load when every version lies ahead of the batch (offsets went back, or the store lost writes)', async () => {
    const store = await make();
    const claim = await store.claim('p', task);
    await store.save('p', task, claim, '0', '10', 'a');
    await store.save('p', task, claim, '10', '20', 'b');
    const err = await store.load('p', task, '5').catch((e: unknown) => e);
    expect(isFabricError(err, 'FABRIC_STATE_MISMATCH')).toBe(true);
    expect((err as Error).message).toMatch(/covers offsets up to 20 \(previous version 10\), but the batch starts at 5/);
  });

  it('refuses a save whose base is neither version', async () => {
    const store = await make();
    const claim = await store.claim('p', task);
    await store.save('p', task, claim, '0', '10', 'a');
    await store.save('p', task, claim, '10', '20', 'b');
    await expect(store.save('p', task, claim, '5', '8', 'c')).rejects.toThrow(/no version at or before offset 5/);
  });
});
}
