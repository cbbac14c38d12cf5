import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERRORS } from '../../topology/errors.js';
import { SETTINGS } from '../../topology/config.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

describe('documentation', () => {
  it('documents every error code of the catalogue in README', () => {
    for (const code of Object.keys(ERRORS)) expect(readme, code).toContain(`\`${code}\``);
  });
  it('documents every configuration variable in README', () => {
    for (const s of Object.values(SETTINGS)) expect(readme, s.env).toContain(`\`${s.env}\``);
  });
  it('leads with the two commands', () => {
    expect(readme).toContain('npm ci && npm start');
    expect(readme).toContain('npm ci && npm test');
  });
});
