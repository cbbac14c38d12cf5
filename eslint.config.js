import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.stack/**', 'models/**', 'coverage/**'] },
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
  {
    // Layering: processors never import gateways; schemas import nothing of ours.
    files: ['processors/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/gateways/**'] }] },
  },
  {
    files: ['schemas/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/topology/**', '**/processors/**', '**/gateways/**', '**/deploy/**'] }] },
  },
);
