import { stackUp } from '../../deploy/stack.js';
import { loadConfig } from '../../topology/config.js';

/**
 * Vitest globalSetup for the integration suite: makes sure the local stack is up before any test runs.
 * It is deliberately not torn down afterwards: the stack is shared between runs (and with `fabric stack up`),
 * and a second `stackUp` on a running stack only runs the health checks.
 */
export default async function setup(): Promise<void> {
  await stackUp(loadConfig(), (line) => console.log(line));
}
