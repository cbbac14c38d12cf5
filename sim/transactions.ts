/**
 * A PaySim-like transaction simulator with injected fraud rings and a drift switch.
 *
 * Legit traffic: a population of accounts with persistent balances (kept in integer cents, so every
 * legit event has old_balance - amount = new_balance exactly, or old + amount = new for CASH_IN, and
 * each event's old_balance is the account's previous new_balance), a PaySim-like type mix, lognormal
 * amounts per type scaled per account, favourite merchants/payees/agents, and a channel per type.
 *
 * Fraud: a few rings, each with mule accounts and cash-out agents. A campaign compromises a rich
 * account and drains most of its balance within minutes: 1-3 TRANSFERs to the ring's mules, often a
 * CASH_OUT at a ring agent, then each mule cashes out what it received. Victim debits often carry
 * PaySim's signature (new_balance 0 although old_balance - amount != 0, or amount > old_balance).
 *
 * Timing: one Poisson process at ratePerSec gives every event its time; pending fraud steps take the
 * first slot at or after their due time, so the rate (and the count) are exact and ts never decreases.
 */
import type { Outcome, Transaction, TransactionType } from '../schemas/types.generated.js';
import { Rng, WeightedSampler, deriveSeed } from './rng.js';

export interface SimulatedTransaction {
  event: Transaction;
  isFraud: boolean;
}

export interface TransactionSimOptions {
  seed: number;
  /** Event time of the stream's start, epoch ms (the first event comes one inter-arrival gap later). */
  startTs: number;
  /** Mean events per second of event time (all accounts, fraud included). */
  ratePerSec: number;
  /** Stop after this many events (infinite without). */
  count?: number;
  /**
   * Legit account population. Default: enough accounts that each transacts at the training stream's
   * pace whatever the rate (ACCOUNT_RATE_PER_SEC each, about 17 a day): DEFAULT_ACCOUNTS at the
   * training rate (0.4/s) and below, `rate / ACCOUNT_RATE_PER_SEC` above it. Without that, a faster
   * stream would be a different world (each account hundreds of times busier), and every activity
   * feature, and the score, would read as drifted against the model's training reference.
   */
  accounts?: number;
  /** Target share of fraud events (default 0.015). */
  fraudRate?: number;
  /** Shift the distributions: amounts x2.5, TRANSFERs from about 7% to 30% of events, more mobile. */
  drift?: boolean;
}

export const DEFAULT_ACCOUNTS = 2000;
/** Events per second of one account (on average) when the population scales with the rate: the training stream's 0.4/s over 2000 accounts. */
export const ACCOUNT_RATE_PER_SEC = 0.4 / DEFAULT_ACCOUNTS;
/** Account ids have 7 digits below the mule range (C9...). */
const MAX_ACCOUNTS = 8_999_999;

/** The legit population a stream of `ratePerSec` gets by default (see TransactionSimOptions.accounts). */
export function accountsFor(ratePerSec: number): number {
  return Math.min(MAX_ACCOUNTS, Math.max(DEFAULT_ACCOUNTS, Math.round(ratePerSec / ACCOUNT_RATE_PER_SEC)));
}
export const DEFAULT_FRAUD_RATE = 0.015;
export const DRIFT_AMOUNT_FACTOR = 2.5;

const TYPES: readonly TransactionType[] = ['PAYMENT', 'CASH_IN', 'CASH_OUT', 'TRANSFER', 'DEBIT'];
/** PaySim's mix (roughly): CASH_OUT 35%, PAYMENT 34%, CASH_IN 22%, TRANSFER 8%, DEBIT <1%. */
const MIX: readonly number[] = [0.34, 0.22, 0.35, 0.08, 0.01];
/**
 * Drifted: half of the legit draws are TRANSFERs (a TRANSFER larger than the balance becomes a CASH_IN,
 * so about 30% of events end up TRANSFERs, from 7%: a PSI above 0.25 on that input alone).
 */
const MIX_DRIFT: readonly number[] = [0.2, 0.1, 0.2, 0.49, 0.01];
/** Lognormal amount per type: median (currency units) and sigma, before the account's own scale. */
const AMOUNT: Record<TransactionType, { median: number; sigma: number }> = {
  PAYMENT: { median: 35, sigma: 0.9 },
  CASH_IN: { median: 480, sigma: 0.8 },
  CASH_OUT: { median: 180, sigma: 0.8 },
  TRANSFER: { median: 420, sigma: 1.0 },
  DEBIT: { median: 60, sigma: 0.7 },
};
/** Share of a type's events that happen at the given physical channel; the rest are online (web/mobile). */
const PHYSICAL: Record<TransactionType, { channel: 'pos' | 'atm'; share: number }> = {
  PAYMENT: { channel: 'pos', share: 0.35 },
  CASH_IN: { channel: 'atm', share: 0.65 },
  CASH_OUT: { channel: 'atm', share: 0.7 },
  TRANSFER: { channel: 'atm', share: 0 },
  DEBIT: { channel: 'pos', share: 0.5 },
};
/** A legit debit larger than the balance drains the account fully (consistently) with this probability, else becomes a CASH_IN. */
const LEGIT_FULL_DRAIN_P = 0.05;

const MERCHANTS = 500;
const AGENTS = 100;
const BANKS = 20;
const RINGS = 4;

// Fraud campaign shape (expected fraud events per campaign derived below so the share hits fraudRate).
const TRANSFERS_P = [0.45, 0.35, 0.2]; // 1, 2 or 3 transfers
const VICTIM_CASHOUT_P = 0.5;
const MULE_CASHOUT_P = 0.75;
const EVENTS_PER_CAMPAIGN =
  TRANSFERS_P.reduce((s, p, i) => s + p * (i + 1), 0) * (1 + MULE_CASHOUT_P) + VICTIM_CASHOUT_P;
const TRANSFER_GAP_MEAN_S = 90;
const VICTIM_CASHOUT_GAP_MEAN_S = 120;
const MULE_CASHOUT_GAP_MEAN_S = 600;

interface Account {
  index: number;
  id: string;
  /** Template index of the payees (the first DEFAULT_ACCOUNTS-sized shard's numbering). */
  payeeIdx: number[];
  /** Balance in integer cents. */
  balance: number;
  /** Multiplier of all the account's amounts. */
  scale: number;
  /** Probability that an online event of this account uses mobile (else web). */
  mobile: number;
  merchants: number[];
  payees: string[];
  agents: number[];
  bank: number;
}

interface Ring {
  mules: Account[];
  agents: string[];
}

type Step =
  | { kind: 'transfer'; due: number; seq: number; victim: Account; mule: Account; cents: number; ring: Ring }
  | { kind: 'victim_cashout'; due: number; seq: number; victim: Account; agent: string; cents: number }
  | { kind: 'mule_cashout'; due: number; seq: number; mule: Account; agent: string; cents: number };

const pad = (n: number, width: number): string => String(n).padStart(width, '0');
export const accountId = (i: number): string => `C${pad(i, 7)}`;
const merchantId = (i: number): string => `M${pad(i, 5)}`;
const agentId = (i: number): string => `A${pad(i, 4)}`;
const bankId = (i: number): string => `B${pad(i, 3)}`;
/** Ring mules live in their own id range (C9rrkkkk) and ring agents in A9rkk, apart from the population. */
const muleId = (ring: number, k: number, shard = 0): string => (shard === 0 ? `C9${pad(ring, 2)}${pad(k, 4)}` : `C9${pad(shard, 4)}${ring}${k}`);
const ringAgentId = (ring: number, k: number): string => `A9${ring % 10}${pad(k, 2)}`;

/** Event ids sort (as strings) in generation order, which is what compareEvents uses to break ts ties. */
export const transactionEventId = (seed: number, n: number): string => `t-${seed}-${pad(n, 10)}`;

function cents(x: number): number {
  return Math.max(1, Math.round(x * 100));
}

export function* generateTransactions(opts: TransactionSimOptions): Generator<SimulatedTransaction> {
  const { seed, startTs, ratePerSec, count } = opts;
  const nAccounts = opts.accounts ?? accountsFor(ratePerSec);
  const fraudRate = opts.fraudRate ?? DEFAULT_FRAUD_RATE;
  const drift = opts.drift ?? false;
  if (!(ratePerSec > 0)) throw new Error('generateTransactions: ratePerSec must be > 0');
  if (!(Number.isSafeInteger(nAccounts) && nAccounts >= 2 && nAccounts <= MAX_ACCOUNTS)) throw new Error(`generateTransactions: accounts must be an integer in [2, ${MAX_ACCOUNTS}]`);
  // Populations larger than DEFAULT_ACCOUNTS are shards of one template population of that size:
  // account k is template k % T in shard floor(k / T), with the template's traits, payees in its own
  // shard, and a ring of mules per shard. Up to T accounts the stream is exactly the unsharded one.
  const templates = Math.min(nAccounts, DEFAULT_ACCOUNTS);
  if (!(fraudRate >= 0 && fraudRate < 0.5)) throw new Error('generateTransactions: fraudRate must be in [0, 0.5)');

  // The population does not depend on drift, count or rate: the same seed gives the same accounts.
  const pop = new Rng(deriveSeed(seed, 1));
  const merchantSampler = new WeightedSampler(Array.from({ length: MERCHANTS }, (_, i) => 1 / (i + 1) ** 0.9));
  const accounts: Account[] = [];
  const activity: number[] = [];
  for (let i = 0; i < templates; i++) {
    const payeeIdx: number[] = [];
    const nPayees = pop.int(1, 4);
    while (payeeIdx.length < nPayees) {
      const j = pop.int(0, templates - 1);
      if (j !== i) payeeIdx.push(j);
    }
    accounts.push({
      index: i,
      id: accountId(i),
      payeeIdx,
      payees: payeeIdx.map(accountId),
      balance: cents(pop.lognormal(Math.log(1500), 1.0)),
      scale: pop.lognormal(0, 0.5),
      mobile: pop.bernoulli(0.55) ? 0.85 : 0.15,
      merchants: Array.from({ length: pop.int(3, 8) }, () => merchantSampler.sample(pop)),
      agents: [pop.int(0, AGENTS - 1), pop.int(0, AGENTS - 1)],
      bank: pop.int(0, BANKS - 1),
    });
    activity.push(pop.lognormal(0, 0.7));
  }
  const initialBalance = accounts.map((a) => a.balance);
  /** Accounts of template t across the shards (the last shard may be partial). */
  const shardsOf = (t: number): number => Math.floor((nAccounts - 1 - t) / templates) + 1;
  // A template's weight covers all its copies, so every account keeps its template's own pace.
  const accountSampler = new WeightedSampler(nAccounts === templates ? activity : activity.map((a, t) => a * shardsOf(t)));
  const rings: Ring[] = [];
  for (let r = 0; r < RINGS; r++) {
    const nMules = pop.int(3, 6);
    rings.push({
      mules: Array.from({ length: nMules }, (_, k) => ({
        index: -1,
        id: muleId(r, k),
        payeeIdx: [],
        balance: cents(pop.lognormal(Math.log(50), 0.8)),
        scale: 1,
        mobile: 0.9,
        merchants: [],
        payees: [],
        agents: [],
        bank: 0,
      })),
      agents: Array.from({ length: pop.int(1, 2) }, (_, k) => ringAgentId(r, k)),
    });
  }

  const muleBalance = rings.map((r) => r.mules.map((m) => m.balance));
  const copies = new Map<number, Account>();
  const shardRings = new Map<number, Ring[]>();
  /** Account k: a template, or its copy in shard floor(k / T) (made on first use, with the template's initial balance). */
  const accountAt = (k: number): Account => {
    if (k < templates) return accounts[k] as Account;
    let acc = copies.get(k);
    if (!acc) {
      const t = k % templates;
      const base = k - t;
      const template = accounts[t] as Account;
      const payees = template.payeeIdx.map((j) => accountId(base + j < nAccounts ? base + j : j));
      acc = { ...template, index: k, id: accountId(k), balance: initialBalance[t] as number, payees };
      copies.set(k, acc);
    }
    return acc;
  };
  const ringsOf = (shard: number): Ring[] => {
    if (shard === 0) return rings;
    let rs = shardRings.get(shard);
    if (!rs) {
      rs = rings.map((r, ri) => ({ agents: r.agents, mules: r.mules.map((m, k) => ({ ...m, id: muleId(ri, k, shard), balance: (muleBalance[ri] as number[])[k] as number })) }));
      shardRings.set(shard, rs);
    }
    return rs;
  };

  const rng = new Rng(deriveSeed(seed, drift ? 3 : 2));
  const pickAccount = (): Account => {
    const t = accountSampler.sample(rng);
    if (nAccounts === templates) return accounts[t] as Account;
    const n = shardsOf(t);
    return accountAt(t + templates * (n > 1 ? rng.int(0, n - 1) : 0));
  };
  const mix = drift ? MIX_DRIFT : MIX;
  const amountFactor = drift ? DRIFT_AMOUNT_FACTOR : 1;
  // Fraud steps replace legit slots, so campaigns start on a share of the free slots.
  const campaignP = fraudRate / EVENTS_PER_CAMPAIGN / (1 - fraudRate);
  const pending: Step[] = [];
  let stepSeq = 0;
  const schedule = (s: Step): void => {
    let i = pending.length;
    while (i > 0 && ((pending[i - 1] as Step).due > s.due || ((pending[i - 1] as Step).due === s.due && (pending[i - 1] as Step).seq > s.seq))) i--;
    pending.splice(i, 0, s);
  };

  const onlineChannel = (acc: Account): string => (rng.bernoulli(drift ? Math.max(acc.mobile, 0.92) : acc.mobile) ? 'mobile' : 'web');
  const channelFor = (acc: Account, type: TransactionType): string => {
    const phys = PHYSICAL[type];
    return rng.bernoulli(phys.share) ? phys.channel : onlineChannel(acc);
  };
  const amountCents = (acc: Account, type: TransactionType): number =>
    cents(acc.scale * amountFactor * rng.lognormal(Math.log(AMOUNT[type].median), AMOUNT[type].sigma));

  const legit = (eventId: string, ts: number): Transaction => {
    const acc = pickAccount();
    let type = TYPES[rng.categorical(mix)] as TransactionType;
    let amount = amountCents(acc, type);
    if (type !== 'CASH_IN' && amount > acc.balance) {
      if ((type === 'CASH_OUT' || type === 'TRANSFER') && acc.balance > 0 && rng.bernoulli(LEGIT_FULL_DRAIN_P)) {
        amount = acc.balance;
      } else {
        type = 'CASH_IN';
        amount = amountCents(acc, type);
      }
    }
    let counterparty: string;
    switch (type) {
      case 'PAYMENT':
        counterparty = merchantId(rng.bernoulli(0.8) ? rng.pick(acc.merchants) : merchantSampler.sample(rng));
        break;
      case 'TRANSFER':
        counterparty = rng.bernoulli(0.85) ? rng.pick(acc.payees) : accountId((acc.index + rng.int(1, nAccounts - 1)) % nAccounts);
        break;
      case 'DEBIT':
        counterparty = bankId(acc.bank);
        break;
      default:
        counterparty = agentId(rng.bernoulli(0.9) ? rng.pick(acc.agents) : rng.int(0, AGENTS - 1));
    }
    const old = acc.balance;
    acc.balance = type === 'CASH_IN' ? old + amount : old - amount;
    return {
      event_id: eventId,
      account_id: acc.id,
      counterparty_id: counterparty,
      type,
      amount: amount / 100,
      old_balance: old / 100,
      new_balance: acc.balance / 100,
      channel: channelFor(acc, type),
      ts,
    };
  };

  /** A victim debit with PaySim's fraud signatures: consistent drain, zeroed balance, or overdraw. */
  const victimDebit = (victim: Account, planned: number): { amount: number; old: number; next: number } => {
    const old = victim.balance;
    const u = rng.uniform();
    // An already emptied account still "sends" the planned amount (old 0, amount > 0, new 0).
    let amount = old > 0 ? Math.min(planned, old) : planned;
    let next: number;
    if (u < 0.4) {
      next = Math.max(0, old - amount);
    } else if (u < 0.75) {
      next = 0; // the rest vanishes too: old - amount != new
    } else {
      amount = Math.max(planned, Math.round(old * rng.range(1.2, 3)));
      next = 0; // more than the balance leaves the account
    }
    victim.balance = next;
    return { amount, old, next };
  };

  const startCampaign = (ts: number): void => {
    // The richest of a few random accounts: fraudsters go where the money is.
    let victim = pickAccount();
    for (let i = 0; i < 4; i++) {
      const other = pickAccount();
      if (other.balance > victim.balance) victim = other;
    }
    // The victim's shard's rings, so mules keep the training stream's pace too.
    const ring = ringsOf(Math.floor(victim.index / templates))[rng.int(0, RINGS - 1)] as Ring;
    const nTransfers = Math.min(rng.categorical(TRANSFERS_P) + 1, ring.mules.length);
    const budget = Math.max(victim.balance, cents(rng.lognormal(Math.log(800), 0.6))) * rng.range(0.75, 1);
    const weights = Array.from({ length: nTransfers + 1 }, () => rng.range(0.5, 1.5));
    const cashout = rng.bernoulli(VICTIM_CASHOUT_P);
    const totalW = weights.reduce((s, w, i) => s + (i < nTransfers || cashout ? w : 0), 0);
    const mules = [...ring.mules];
    let due = ts;
    for (let i = 0; i < nTransfers; i++) {
      const mule = mules.splice(rng.int(0, mules.length - 1), 1)[0] as Account;
      schedule({ kind: 'transfer', due, seq: stepSeq++, victim, mule, ring, cents: Math.max(1, Math.round((budget * (weights[i] as number)) / totalW)) });
      due += Math.round(rng.exponential(1 / TRANSFER_GAP_MEAN_S) * 1000);
    }
    if (cashout) {
      due += Math.round(rng.exponential(1 / VICTIM_CASHOUT_GAP_MEAN_S) * 1000);
      schedule({ kind: 'victim_cashout', due, seq: stepSeq++, victim, agent: rng.pick(ring.agents), cents: Math.max(1, Math.round((budget * (weights[nTransfers] as number)) / totalW)) });
    }
  };

  const runStep = (s: Step, eventId: string, ts: number): Transaction => {
    switch (s.kind) {
      case 'transfer': {
        const d = victimDebit(s.victim, s.cents);
        s.mule.balance += d.amount;
        if (rng.bernoulli(MULE_CASHOUT_P)) {
          schedule({
            kind: 'mule_cashout',
            due: ts + Math.round(rng.exponential(1 / MULE_CASHOUT_GAP_MEAN_S) * 1000),
            seq: stepSeq++,
            mule: s.mule,
            agent: rng.pick(s.ring.agents),
            cents: Math.max(1, Math.round(d.amount * rng.range(0.9, 1))),
          });
        }
        return { event_id: eventId, account_id: s.victim.id, counterparty_id: s.mule.id, type: 'TRANSFER', amount: d.amount / 100, old_balance: d.old / 100, new_balance: d.next / 100, channel: rng.bernoulli(0.7) ? 'mobile' : 'web', ts };
      }
      case 'victim_cashout': {
        const d = victimDebit(s.victim, s.cents);
        return { event_id: eventId, account_id: s.victim.id, counterparty_id: s.agent, type: 'CASH_OUT', amount: d.amount / 100, old_balance: d.old / 100, new_balance: d.next / 100, channel: rng.bernoulli(0.8) ? 'atm' : 'mobile', ts };
      }
      case 'mule_cashout': {
        // Mules cash out what they received, consistently: the balance is theirs now.
        const old = s.mule.balance;
        const amount = Math.min(s.cents, old);
        s.mule.balance = old - amount;
        return { event_id: eventId, account_id: s.mule.id, counterparty_id: s.agent, type: 'CASH_OUT', amount: amount / 100, old_balance: old / 100, new_balance: s.mule.balance / 100, channel: 'atm', ts };
      }
    }
  };

  let elapsedMs = 0;
  for (let n = 0; count === undefined || n < count; n++) {
    elapsedMs += rng.exponential(ratePerSec) * 1000;
    const ts = startTs + Math.floor(elapsedMs);
    const eventId = transactionEventId(seed, n);
    const head = pending[0];
    if (head !== undefined && head.due <= ts) {
      pending.shift();
      yield { event: runStep(head, eventId, ts), isFraud: true };
    } else if (rng.bernoulli(campaignP)) {
      startCampaign(ts);
      const first = pending.shift() as Step;
      yield { event: runStep(first, eventId, ts), isFraud: true };
    } else {
      yield { event: legit(eventId, ts), isFraud: false };
    }
  }
}

/** The label observed for a simulated transaction at observedTs. */
export function outcomeFor(sim: SimulatedTransaction, observedTs: number): Outcome {
  return {
    event_id: sim.event.event_id,
    entity_id: sim.event.account_id,
    item_id: null,
    label: sim.isFraud ? 'fraud' : 'legit',
    value: sim.isFraud ? 1 : 0,
    ts: observedTs,
  };
}
