import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.stack/**', '.scratch/**', 'models/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', console: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', Buffer: 'readonly', URL: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'error',
      'no-restricted-imports': 'off',
    },
  },
  // Layering, arrows point down: schemas <- topology <- serving <- processors, gateways <- app; deploy and sim
  // are used only by app (and tests). Nothing imports app. serving/ (model engine, registry, online features,
  // predict) is what the gateway and the processors share, so neither imports the other.
  {
    files: ['schemas/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/topology/**', '**/processors/**', '**/gateways/**', '**/deploy/**', '**/sim/**', '**/app/**'] }] },
  },
  {
    files: ['topology/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/processors/**', '**/gateways/**', '**/deploy/**', '**/sim/**', '**/app/**'] }] },
  },
  {
    files: ['serving/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/processors/**', '**/gateways/**', '**/deploy/**', '**/sim/**', '**/app/**'] }] },
  },
  {
    files: ['processors/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/gateways/**', '**/deploy/**', '**/sim/**', '**/app/**'] }] },
  },
  {
    files: ['gateways/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/processors/**', '**/deploy/**', '**/sim/**', '**/app/**'] }] },
  },
  {
    files: ['deploy/**/*.ts', 'sim/**/*.ts', 'scripts/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/app/**', '**/gateways/**'] }] },
  },
);
