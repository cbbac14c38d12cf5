import { expect } from 'vitest';
import { FabricError } from '../../topology/errors.js';

/** The FabricError a promise rejects with (the test fails if it resolves or rejects with anything else). */
export async function fabricFailure(p: Promise<unknown>): Promise<FabricError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(FabricError);
  return err as FabricError;
}
