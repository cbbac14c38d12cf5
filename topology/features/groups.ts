import { avg, count, distinctCount, featureGroup, max, ratio, sum, timeSincePrevious, validateGroups, type AggregationSpec, type FeatureGroup } from './definition.js';

/**
 * The fabric's feature groups. `account` feeds the fraud model and keeps exactly the eight features
 * (and names) it was trained with; `user` and `item` describe the recommendation stream.
 */
export const accountGroup: FeatureGroup = featureGroup({
  name: 'account',
  stream: 'transactions',
  schema: 'transaction',
  entity: 'account_id',
  doc: 'Payment activity of an account: counts, sums, average and maximum amount, distinct counterparties, time since its previous transaction.',
  features: {
    txn_count_1h: count('1h'),
    txn_count_24h: count('24h'),
    amount_sum_1h: sum('amount', '1h'),
    amount_sum_24h: sum('amount', '24h'),
    amount_avg_24h: avg('amount', '24h'),
    amount_max_24h: max('amount', '24h', { empty: 0 }),
    distinct_counterparties_24h: distinctCount('counterparty_id', '24h'),
    seconds_since_last_txn: timeSincePrevious(),
  },
});

/** Views, clicks and purchases per 1 h and 24 h, click-through rate, distinct counterparts, time since the previous interaction. */
function interactionFeatures(prefix: string, other: 'item_id' | 'user_id'): Record<string, AggregationSpec> {
  const features: Record<string, AggregationSpec> = {};
  for (const action of ['view', 'click', 'purchase'] as const) {
    for (const window of ['1h', '24h'] as const) features[`${prefix}_${action}s_${window}`] = count(window, { where: { action } });
  }
  features[`${prefix}_ctr_24h`] = ratio(`${prefix}_clicks_24h`, `${prefix}_views_24h`);
  features[`${prefix}_distinct_${other === 'item_id' ? 'items' : 'users'}_24h`] = distinctCount(other, '24h');
  features[`${prefix}_seconds_since_last_interaction`] = timeSincePrevious();
  return features;
}

export const userGroup: FeatureGroup = featureGroup({
  name: 'user',
  stream: 'interactions',
  schema: 'interaction',
  entity: 'user_id',
  doc: 'A user\'s recent interactions: views, clicks, purchases, click-through rate, distinct items, time since the previous interaction.',
  features: interactionFeatures('user', 'item_id'),
});

export const itemGroup: FeatureGroup = featureGroup({
  name: 'item',
  stream: 'interactions',
  schema: 'interaction',
  entity: 'item_id',
  // Its input is the interactions re-keyed by item from every user partition: an item's events come
  // from all of them, so the skew between those partitions' progress (a backlog, a slow batch) adds to
  // the lateness the group must absorb before routing an event to late.interactions.
  lateness: '2h',
  doc: 'An item\'s recent audience: views, clicks, purchases, click-through rate, distinct users, time since its previous interaction.',
  features: interactionFeatures('item', 'user_id'),
});

export const FEATURE_GROUPS: readonly FeatureGroup[] = Object.freeze([accountGroup, userGroup, itemGroup]);
validateGroups(FEATURE_GROUPS);

export function featureGroupNamed(name: string): FeatureGroup | undefined {
  return FEATURE_GROUPS.find((g) => g.name === name);
}
