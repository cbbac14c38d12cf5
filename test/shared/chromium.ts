import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];

/**
 * Debian's headless-capable Chromium, installed with apt when missing (the report test renders the HTML
 * report in it; these machines run the tests as root with Debian's apt). Returns its path; throws with
 * the reason when it can be neither found nor installed.
 */
export function ensureChromium(): string {
  const found = CANDIDATES.find((p) => existsSync(p));
  if (found) return found;
  try {
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore', timeout: 300_000 });
    execFileSync('apt-get', ['install', '-y', '-qq', 'chromium'], { stdio: 'ignore', timeout: 900_000, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  } catch (err) {
    throw new Error(`Chromium is not installed and apt-get install chromium failed (run it as root): ${(err as Error).message}`);
  }
  const installed = CANDIDATES.find((p) => existsSync(p));
  if (!installed) throw new Error('apt-get install chromium succeeded but no chromium binary was found');
  return installed;
}

const FLAGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--virtual-time-budget=15000'];

/** The DOM of a page after its scripts ran. */
export function dumpDom(chromium: string, url: string): string {
  return execFileSync(chromium, [...FLAGS, '--dump-dom', url], { encoding: 'utf8', timeout: 120_000, maxBuffer: 64 * 1024 * 1024, stdio: ['ignore', 'pipe', 'ignore'] });
}

/** A PNG screenshot of a page at the given window size. */
export function screenshot(chromium: string, url: string, out: string, width = 1300, height = 2400): void {
  execFileSync(chromium, [...FLAGS, `--window-size=${width},${height}`, `--screenshot=${out}`, url], { timeout: 120_000, stdio: 'ignore' });
}
