/**
 * A user-item interaction simulator for the recommendations use case.
 *
 * Items belong to categories and have a popularity; users have preferences over categories and an
 * activity level. Every view may lead to a click on the same item seconds later, and a click to a
 * purchase minutes later, with higher odds in the user's favourite categories (view >> click >> purchase).
 * As for transactions, one Poisson process at ratePerSec times every event; follow-ups take the first
 * slot at or after their due time. `drift: true` rotates users' tastes to other categories and
 * reverses item popularity within categories.
 */
import type { Interaction, InteractionAction } from '../schemas/types.generated.js';
import { Rng, WeightedSampler, deriveSeed } from './rng.js';

export interface InteractionSimOptions {
  seed: number;
  startTs: number;
  ratePerSec: number;
  count?: number;
  /** Default 1000. */
  users?: number;
  /** Default 500. */
  items?: number;
  drift?: boolean;
}

export const DEFAULT_USERS = 1000;
export const DEFAULT_ITEMS = 500;
export const CATEGORIES = 12;

export interface CatalogItem {
  item_id: string;
  category: string;
  /** Relative popularity within its category. */
  popularity: number;
  price: number;
}

const CLICK_P = { favourite: 0.12, other: 0.03 };
const PURCHASE_P = { favourite: 0.15, other: 0.06 };
const CLICK_GAP_MEAN_S = 20;
const PURCHASE_GAP_MEAN_S = 180;

const pad = (n: number, width: number): string => String(n).padStart(width, '0');
export const userId = (i: number): string => `U${pad(i, 6)}`;
export const itemId = (i: number): string => `I${pad(i, 5)}`;
export const categoryName = (c: number): string => `cat-${pad(c, 2)}`;
export const interactionEventId = (seed: number, n: number): string => `i-${seed}-${pad(n, 10)}`;

const CATEGORY_WORDS = ['Books', 'Music', 'Garden', 'Kitchen', 'Toys', 'Sports', 'Outdoor', 'Tools', 'Beauty', 'Games', 'Office', 'Travel'];

/**
 * The `updated_at` of every catalogue record: a seed's catalogue never changes, so publishing it again
 * writes the very same records (a fixed instant, not the publication time).
 */
export const CATALOGUE_UPDATED_AT = Date.UTC(2024, 0, 1);

/** The catalogue as metadata records (kind item): title, category and price of every item of the seed. */
export function catalogueMetadata(opts: { seed: number; items?: number }): { id: string; attributes: { title: string; category: string; price: number; available: boolean } }[] {
  return itemCatalog(opts).map((item, i) => ({
    id: item.item_id,
    attributes: { title: `${CATEGORY_WORDS[i % CATEGORIES % CATEGORY_WORDS.length]} item ${i}`, category: item.category, price: item.price, available: true },
  }));
}

/** The item catalog of a seed (metadata for enrichment); independent of drift, rate and count. */
export function itemCatalog(opts: { seed: number; items?: number }): CatalogItem[] {
  const rng = new Rng(deriveSeed(opts.seed, 11));
  const n = opts.items ?? DEFAULT_ITEMS;
  return Array.from({ length: n }, (_, i) => ({
    item_id: itemId(i),
    category: categoryName(i % CATEGORIES),
    popularity: Math.round(rng.lognormal(0, 1) * 1e6) / 1e6,
    price: Math.round(rng.lognormal(Math.log(25), 0.9) * 100) / 100,
  }));
}

interface User {
  id: string;
  favourites: Set<number>;
  prefs: WeightedSampler;
}

interface FollowUp {
  due: number;
  seq: number;
  user: User;
  item: number;
  action: InteractionAction;
  favourite: boolean;
}

export function* generateInteractions(opts: InteractionSimOptions): Generator<Interaction> {
  const { seed, startTs, ratePerSec, count } = opts;
  const nUsers = opts.users ?? DEFAULT_USERS;
  const nItems = opts.items ?? DEFAULT_ITEMS;
  const drift = opts.drift ?? false;
  if (!(ratePerSec > 0)) throw new Error('generateInteractions: ratePerSec must be > 0');
  if (!(nUsers >= 1 && nItems >= CATEGORIES)) throw new Error(`generateInteractions: need >= 1 user and >= ${CATEGORIES} items`);

  const catalog = itemCatalog({ seed, items: nItems });
  const byCategory: number[][] = Array.from({ length: CATEGORIES }, () => []);
  catalog.forEach((_, i) => (byCategory[i % CATEGORIES] as number[]).push(i));
  const itemSamplers = byCategory.map((idx) => {
    const pops = idx.map((i) => (catalog[i] as CatalogItem).popularity);
    if (drift) {
      // Reverse the popularity ranking within the category: yesterday's long tail is today's hit.
      const ascending = [...pops].sort((a, b) => a - b);
      const descendingIdx = pops.map((_, k) => k).sort((a, b) => (pops[b] as number) - (pops[a] as number) || a - b);
      const reversed: number[] = new Array<number>(pops.length).fill(0);
      descendingIdx.forEach((k, r) => (reversed[k] = ascending[r] as number));
      return new WeightedSampler(reversed);
    }
    return new WeightedSampler(pops);
  });

  const pop = new Rng(deriveSeed(seed, 12));
  const users: User[] = [];
  const activity: number[] = [];
  for (let u = 0; u < nUsers; u++) {
    const nFav = pop.int(1, 3);
    const favs: number[] = [];
    while (favs.length < nFav) {
      const c = pop.int(0, CATEGORIES - 1);
      if (!favs.includes(c)) favs.push(c);
    }
    // Drift moves every taste a few categories over.
    const favourites = new Set(favs.map((c) => (drift ? (c + 5) % CATEGORIES : c)));
    const weights = Array.from({ length: CATEGORIES }, (_, c) => (favourites.has(c) ? 6 / nFav : 1 / CATEGORIES) * pop.range(0.7, 1.3));
    users.push({ id: userId(u), favourites, prefs: new WeightedSampler(weights) });
    activity.push(pop.lognormal(0, 0.8));
  }
  const userSampler = new WeightedSampler(activity);

  const rng = new Rng(deriveSeed(seed, drift ? 14 : 13));
  const pending: FollowUp[] = [];
  let seq = 0;
  const schedule = (f: FollowUp): void => {
    let i = pending.length;
    while (i > 0 && ((pending[i - 1] as FollowUp).due > f.due || ((pending[i - 1] as FollowUp).due === f.due && (pending[i - 1] as FollowUp).seq > f.seq))) i--;
    pending.splice(i, 0, f);
  };

  let elapsedMs = 0;
  for (let n = 0; count === undefined || n < count; n++) {
    elapsedMs += rng.exponential(ratePerSec) * 1000;
    const ts = startTs + Math.floor(elapsedMs);
    const head = pending[0];
    let user: User;
    let item: number;
    let action: InteractionAction;
    let favourite: boolean;
    if (head !== undefined && head.due <= ts) {
      pending.shift();
      ({ user, item, action, favourite } = head);
    } else {
      user = users[userSampler.sample(rng)] as User;
      const c = user.prefs.sample(rng);
      const inCat = byCategory[c] as number[];
      item = inCat[(itemSamplers[c] as WeightedSampler).sample(rng)] as number;
      action = 'view';
      favourite = user.favourites.has(c);
    }
    if (action === 'view' && rng.bernoulli(favourite ? CLICK_P.favourite : CLICK_P.other)) {
      schedule({ due: ts + Math.round(rng.exponential(1 / CLICK_GAP_MEAN_S) * 1000), seq: seq++, user, item, action: 'click', favourite });
    } else if (action === 'click' && rng.bernoulli(favourite ? PURCHASE_P.favourite : PURCHASE_P.other)) {
      schedule({ due: ts + Math.round(rng.exponential(1 / PURCHASE_GAP_MEAN_S) * 1000), seq: seq++, user, item, action: 'purchase', favourite });
    }
    yield { event_id: interactionEventId(seed, n), user_id: user.id, item_id: itemId(item), action, ts };
  }
}
