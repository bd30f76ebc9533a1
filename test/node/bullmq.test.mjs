// BullMQ through keyfence: several tenants run the same queue names side by
// side, and none may see another's jobs, events or workers, while the real
// Redis behind them holds nothing outside the tenants' namespaces.
//
// Run by node_test.go, once per mode: in sidecar mode each tenant has a
// keyfence of its own; in gateway mode all tenants share one keyfence and
// pick their tenant with ioredis's username/password options, as a
// multi-tenant application would. node_test.go sets KF_TENANTS, a JSON list
// of {id, addr (host:port of the tenant's keyfence), protocol (2 or 3),
// username and password (gateway mode only)}, and REDIS_ADMIN (host:port of
// the real Redis, default user). By hand:
//   KF_TENANTS='[{"id":"a","addr":"127.0.0.1:6380","protocol":3}, ...]' REDIS_ADMIN=... node --test
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import IORedis from 'ioredis';
import { Queue, Worker, QueueEvents, FlowProducer } from 'bullmq';

// Both tenants use exactly these queue names: the proxy alone keeps them apart.
const ORDERS = 'orders';
const SHIPPING = 'shipping';
const PLAIN_JOBS = 8;
const DELAYED_JOBS = 2;
const DELAY_MS = 400;
const BACKOFF_MS = 100;
const REPEAT_EVERY_MS = 200;
const REPEAT_LIMIT = 3;
const FLOWS = 2;
const SHIPPING_CHILDREN_PER_FLOW = 2;
// What each tenant's QueueEvents must report as completed, per queue.
const EXPECTED_ORDERS = PLAIN_JOBS + DELAYED_JOBS + 2 /* flaky, flakyNow */ + REPEAT_LIMIT + FLOWS /* parents */ + FLOWS /* one orders child each */;
const EXPECTED_SHIPPING = FLOWS * SHIPPING_CHILDREN_PER_FLOW;
const WAIT_MS = 30_000;

// A test process left behind (its runner or the Go test killed) would retry
// its connections forever: it ends itself. Unref'd, so it never keeps node up.
setTimeout(() => {
  console.error('bullmq.test.mjs: still running after 150 s, exiting');
  process.exit(1);
}, 150_000).unref();

function env(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`${name} is not set: run this through \`go test ./test/node/\` (node_test.go starts Redis and keyfence)`);
  }
  return v;
}

function hostPort(v) {
  const i = v.lastIndexOf(':');
  return { host: v.slice(0, i), port: Number(v.slice(i + 1)) };
}

// tenantsFromEnv reads KF_TENANTS. At least two tenants: isolation between
// one tenant and itself proves nothing.
function tenantsFromEnv() {
  const list = JSON.parse(env('KF_TENANTS'));
  if (!Array.isArray(list) || list.length < 2) {
    throw new Error(`KF_TENANTS: want a list of at least two tenants, got ${JSON.stringify(list)}`);
  }
  return list.map((t) => new Tenant(t.id, hostPort(t.addr), t.protocol, t.username, t.password));
}

// waitFor polls cond until it holds or ms pass; it returns whether it held.
async function waitFor(cond, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (cond()) return true;
    await sleep(25);
  }
  return cond();
}

function b64(s) {
  return Buffer.from(s).toString('base64');
}

// Tenant holds one tenant's BullMQ objects, its explicit connections and what
// its workers and event listeners saw.
class Tenant {
  constructor(id, ep, protocol, username, password) {
    this.id = id;
    this.ep = ep;
    this.protocol = protocol;
    // Gateway mode: the credentials that pick this tenant. BullMQ's own
    // duplicates of a connection (a worker's blocking one) keep them.
    this.username = username;
    this.password = password;
    // A value only this tenant's payloads carry: finding it anywhere in the
    // other tenant's data means the two mixed.
    this.nonce = `${id}-${randomUUID()}`;
    this.conns = [];
    this.closers = [];
    this.errors = [];
    this.processed = []; // {queue, id, name, data, at}
    this.foreign = []; // payloads a worker got that are not this tenant's
    this.attempts = new Map(); // flaky job id -> [start times]
    this.failedEvents = [];
    this.completed = { [ORDERS]: new Map(), [SHIPPING]: new Map() }; // jobId -> returnvalue
    this.foreignEvents = [];
    this.addedIds = { [ORDERS]: new Set(), [SHIPPING]: new Set() };
    this.plainIds = [];
    this.flowsCompleted = 0;
  }

  // conn opens an explicit ioredis connection to this tenant's keyfence.
  // maxRetriesPerRequest: null is what BullMQ requires of worker connections
  // and is harmless for the others. BullMQ's duplicates keep the protocol
  // and the credentials.
  conn(role) {
    const opts = {
      host: this.ep.host,
      port: this.ep.port,
      protocol: this.protocol,
      maxRetriesPerRequest: null,
      connectionName: `kftest-${this.id}-${role}`,
    };
    if (this.username !== undefined) {
      opts.username = this.username;
      opts.password = this.password;
    }
    const c = new IORedis(opts);
    c.on('error', (err) => this.errors.push(`${role} connection: ${err.message}`));
    this.conns.push(c);
    return c;
  }

  watch(what, obj) {
    obj.on('error', (err) => this.errors.push(`${what}: ${err.message}`));
    this.closers.push(() => obj.close());
    return obj;
  }

  payload(kind, extra = {}) {
    return { tenant: this.id, nonce: this.nonce, kind, ...extra };
  }

  result(job, extra = {}) {
    return { tenant: this.id, nonce: this.nonce, kind: job.data.kind, queue: job.queueName, ...extra };
  }

  // note records a job a worker got and whether it was this tenant's.
  note(queue, job) {
    this.processed.push({ queue, id: job.id, name: job.name, data: job.data, at: Date.now() });
    if (job.data?.tenant !== this.id || job.data?.nonce !== this.nonce) {
      this.foreign.push({ queue, id: job.id, name: job.name, data: job.data });
    }
  }

  async ordersProcessor(job) {
    this.note(ORDERS, job);
    switch (job.name) {
      case 'delayed':
        return this.result(job, { waitedMs: job.processedOn - job.timestamp, delay: job.opts.delay });
      case 'flaky':
      case 'flakyNow': {
        const starts = this.attempts.get(job.id) ?? [];
        starts.push(Date.now());
        this.attempts.set(job.id, starts);
        if (job.attemptsMade === 0) {
          throw new Error(`tenant ${this.id}: first attempt fails on purpose`);
        }
        return this.result(job, { attemptsMade: job.attemptsMade });
      }
      case 'parent': {
        const values = await job.getChildrenValues();
        return this.result(job, { children: Object.values(values) });
      }
      default:
        return this.result(job, { n: job.data.n });
    }
  }

  async shippingProcessor(job) {
    this.note(SHIPPING, job);
    return this.result(job, { n: job.data.n });
  }

  async start() {
    const shared = this.conn('queues');
    this.queues = {
      [ORDERS]: this.watch(`queue ${ORDERS}`, new Queue(ORDERS, { connection: shared })),
      [SHIPPING]: this.watch(`queue ${SHIPPING}`, new Queue(SHIPPING, { connection: shared })),
    };
    this.flow = this.watch('flow producer', new FlowProducer({ connection: this.conn('flows') }));

    for (const q of [ORDERS, SHIPPING]) {
      // From the start of the stream: the queues are new, and no event
      // between "ready" and the first XREAD can be missed.
      const ev = this.watch(`queue events ${q}`, new QueueEvents(q, { connection: this.conn(`events-${q}`), lastEventId: '0-0' }));
      ev.on('completed', ({ jobId, returnvalue }) => {
        const rv = typeof returnvalue === 'string' ? JSON.parse(returnvalue) : returnvalue;
        if (rv?.tenant !== this.id || rv?.nonce !== this.nonce) {
          this.foreignEvents.push({ queue: q, jobId, returnvalue: rv });
        }
        this.completed[q].set(jobId, rv);
        if (rv?.kind === 'parent') this.flowsCompleted++;
      });
      this.queueEvents ??= [];
      this.queueEvents.push(ev);
    }

    // Two named workers on orders, one on shipping: getWorkers must list
    // exactly these for this tenant, although the other tenants' workers have
    // the same queue names.
    this.workerNames = {
      [ORDERS]: [`${this.id}-orders-1`, `${this.id}-orders-2`],
      [SHIPPING]: [`${this.id}-shipping-1`],
    };
    this.workers = [];
    for (const q of [ORDERS, SHIPPING]) {
      const proc = q === ORDERS ? (job) => this.ordersProcessor(job) : (job) => this.shippingProcessor(job);
      for (const name of this.workerNames[q]) {
        const w = this.watch(`worker ${name}`, new Worker(q, proc, { connection: this.conn(`worker-${name}`), name, concurrency: 2 }));
        w.on('failed', (job, err) => this.failedEvents.push({ id: job?.id, name: job?.name, attemptsMade: job?.attemptsMade, msg: err.message }));
        this.workers.push(w);
      }
    }
    await Promise.all([
      ...Object.values(this.queues).map((q) => q.waitUntilReady()),
      ...this.queueEvents.map((e) => e.waitUntilReady()),
      ...this.workers.map((w) => w.waitUntilReady()),
      this.flow.waitUntilReady(),
    ]);
  }

  async addJobs() {
    const orders = this.queues[ORDERS];
    for (let n = 0; n < PLAIN_JOBS; n++) {
      const job = await orders.add('plain', this.payload('plain', { n }));
      this.addedIds[ORDERS].add(job.id);
      this.plainIds.push(job.id);
    }
    for (let n = 0; n < DELAYED_JOBS; n++) {
      const job = await orders.add('delayed', this.payload('delayed', { n }), { delay: DELAY_MS });
      this.addedIds[ORDERS].add(job.id);
    }
    const flaky = await orders.add('flaky', this.payload('flaky'), { attempts: 3, backoff: { type: 'fixed', delay: BACKOFF_MS } });
    this.addedIds[ORDERS].add(flaky.id);
    this.flakyId = flaky.id;
    // No backoff: BullMQ retries at once with its retryJob script, which
    // pushes with a command name (LPUSH or RPUSH) chosen at run time.
    const flakyNow = await orders.add('flakyNow', this.payload('flakyNow'), { attempts: 2 });
    this.addedIds[ORDERS].add(flakyNow.id);
    this.flakyNowId = flakyNow.id;
    await orders.upsertJobScheduler('tick', { every: REPEAT_EVERY_MS, limit: REPEAT_LIMIT }, { name: 'tick', data: this.payload('tick') });
    this.flowRoots = [];
    for (let f = 0; f < FLOWS; f++) {
      const children = [{ name: 'child', queueName: ORDERS, data: this.payload('child', { n: 0, flow: f }) }];
      for (let c = 1; c <= SHIPPING_CHILDREN_PER_FLOW; c++) {
        children.push({ name: 'child', queueName: SHIPPING, data: this.payload('child', { n: c, flow: f }) });
      }
      const tree = await this.flow.add({ name: 'parent', queueName: ORDERS, data: this.payload('parent', { flow: f }), children });
      this.flowRoots.push(tree);
      this.addedIds[ORDERS].add(tree.job.id);
      for (const child of tree.children) this.addedIds[child.job.queueName].add(child.job.id);
    }
  }

  ticksCompleted() {
    return [...this.completed[ORDERS].values()].filter((rv) => rv?.kind === 'tick').length;
  }

  done() {
    const all = (q) => [...this.addedIds[q]].every((id) => this.completed[q].has(id));
    return all(ORDERS) && all(SHIPPING) && this.ticksCompleted() >= REPEAT_LIMIT &&
      this.completed[ORDERS].size >= EXPECTED_ORDERS && this.completed[SHIPPING].size >= EXPECTED_SHIPPING;
  }

  summary() {
    return `tenant ${this.id} (RESP${this.protocol}): jobs processed by workers=${this.processed.length} (orders=${this.processed.filter((p) => p.queue === ORDERS).length}, shipping=${this.processed.filter((p) => p.queue === SHIPPING).length}), ` +
      `completed events orders=${this.completed[ORDERS].size}/${EXPECTED_ORDERS} shipping=${this.completed[SHIPPING].size}/${EXPECTED_SHIPPING}, ` +
      `repeat runs=${this.ticksCompleted()}/${REPEAT_LIMIT}, flows completed=${this.flowsCompleted}/${FLOWS}, failed attempts=${this.failedEvents.length}, ` +
      `foreign payloads=${this.foreign.length}, foreign events=${this.foreignEvents.length}, errors=${this.errors.length}` +
      (this.errors.length ? ` ${JSON.stringify(this.errors)}` : '');
  }

  async close() {
    if (this.closed) return [];
    this.closed = true;
    // Workers first (they hold blocking connections), then the rest; each
    // close is awaited so that node exits with nothing left open.
    const results = await Promise.allSettled(this.closers.slice().reverse().map((c) => c()));
    const closeErrors = results.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
    await Promise.allSettled(this.conns.map((c) => c.quit().catch(() => c.disconnect())));
    return closeErrors;
  }
}

// dumpUpstream reads every key of the real Redis with the admin connection.
// It returns all key names, those outside every tenant, and per tenant the
// values of its keys as [key, value as JSON text] pairs.
async function dumpUpstream(admin, ids) {
  const keys = [];
  let cursor = '0';
  do {
    const [next, batch] = await admin.scan(cursor, 'COUNT', 1000);
    keys.push(...batch);
    cursor = next;
  } while (cursor !== '0');
  const ownerOf = (k) => ids.find((id) => k.startsWith(`tenant:${id}:`));
  const outside = keys.filter((k) => ownerOf(k) === undefined);
  const values = Object.fromEntries(ids.map((id) => [id, []]));
  for (const key of keys) {
    const owner = ownerOf(key);
    if (owner === undefined) continue;
    const type = await admin.type(key);
    let v;
    switch (type) {
      case 'string': v = await admin.get(key); break;
      case 'hash': v = await admin.hgetall(key); break;
      case 'list': v = await admin.lrange(key, 0, -1); break;
      case 'set': v = await admin.smembers(key); break;
      case 'zset': v = await admin.zrange(key, 0, -1, 'WITHSCORES'); break;
      case 'stream': v = await admin.xrange(key, '-', '+'); break;
      default: v = `<${type}>`;
    }
    values[owner].push([key, JSON.stringify(v)]);
  }
  return { keys, outside, values };
}

// keysWhoseValue returns the keys of entries whose value contains needle
// (a string) or matches it (a RegExp).
function keysWhoseValue(entries, needle) {
  const hit = (text) => (typeof needle === 'string' ? text.includes(needle) : needle.test(text));
  return entries.filter(([, text]) => hit(text)).map(([key]) => key);
}

// escapeRegExp quotes s for a RegExp (tenant ids may hold '-').
function escapeRegExp(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('BullMQ through keyfence, tenants with the same queue names', () => {
  // ioredis 6 speaks RESP3 by default (HELLO 3); node_test.go gives some
  // tenants RESP2, what ioredis 5 and most BullMQ deployments speak, so both
  // paths of keyfence are exercised.
  const tenants = tenantsFromEnv();
  const ids = tenants.map((t) => t.id);
  const adminEp = hostPort(env('REDIS_ADMIN'));
  let admin;
  const started = Date.now();

  before(async () => {
    admin = new IORedis({ host: adminEp.host, port: adminEp.port, maxRetriesPerRequest: 1, connectionName: 'kftest-admin' });
    await Promise.all(tenants.map((t) => t.start()));
    await Promise.all(tenants.map((t) => t.addJobs()));
  });

  after(async () => {
    // Whatever the tests left open (all of it when one failed early): node
    // must exit. Closing twice is harmless.
    await Promise.all(tenants.map((t) => t.close()));
    await admin?.quit().catch(() => admin.disconnect());
  });

  it('completes every job, delayed job, retry, repetition and flow of every tenant', async () => {
    const ok = await waitFor(() => tenants.every((t) => t.done()));
    for (const t of tenants) console.log(`figures: ${t.summary()}`);
    assert.ok(ok, `not all jobs completed within ${WAIT_MS} ms: ${tenants.map((t) => t.summary()).join('; ')}`);
    for (const t of tenants) {
      assert.equal(t.completed[ORDERS].size, EXPECTED_ORDERS, `tenant ${t.id}: completed events on ${ORDERS}`);
      assert.equal(t.completed[SHIPPING].size, EXPECTED_SHIPPING, `tenant ${t.id}: completed events on ${SHIPPING}`);
      assert.equal(t.flowsCompleted, FLOWS, `tenant ${t.id}: flows completed`);
    }
  });

  it("keeps each tenant's payloads and events to that tenant", () => {
    for (const t of tenants) {
      assert.deepEqual(t.foreign, [], `tenant ${t.id}'s workers got another tenant's payloads`);
      assert.deepEqual(t.foreignEvents, [], `tenant ${t.id}'s QueueEvents reported another tenant's jobs`);
      assert.deepEqual(t.errors, [], `tenant ${t.id}: errors from BullMQ or ioredis`);
    }
    // Separate namespaces mean separate id counters: every tenant's first
    // jobs are 1, 2, 3, ... although they share the queue name.
    for (const t of tenants.slice(1)) {
      assert.deepEqual(t.plainIds, tenants[0].plainIds, `job ids of the plain jobs of ${tenants[0].id} and ${t.id}`);
    }
  });

  it('runs delayed jobs after their delay', () => {
    for (const t of tenants) {
      const delayed = [...t.completed[ORDERS].values()].filter((rv) => rv.kind === 'delayed');
      assert.equal(delayed.length, DELAYED_JOBS, `tenant ${t.id}: delayed jobs completed`);
      for (const rv of delayed) {
        assert.ok(rv.waitedMs >= DELAY_MS, `tenant ${t.id}: delayed job ran after ${rv.waitedMs} ms, delay ${DELAY_MS} ms`);
      }
    }
  });

  it('retries a failing job with a fixed backoff', () => {
    for (const t of tenants) {
      const starts = t.attempts.get(t.flakyId) ?? [];
      assert.equal(starts.length, 2, `tenant ${t.id}: attempts of the flaky job`);
      assert.ok(starts[1] - starts[0] >= BACKOFF_MS, `tenant ${t.id}: retry came ${starts[1] - starts[0]} ms after the failure, backoff ${BACKOFF_MS} ms`);
      const failed = t.failedEvents.map((f) => [f.id, f.name, f.attemptsMade]).sort();
      assert.deepEqual(failed, [[t.flakyId, 'flaky', 1], [t.flakyNowId, 'flakyNow', 1]].sort(), `tenant ${t.id}: failed events`);
      const rv = t.completed[ORDERS].get(t.flakyId);
      assert.equal(rv?.attemptsMade, 1, `tenant ${t.id}: the flaky job completed on its second attempt`);
    }
  });

  it('retries a failing job at once (retryJob: push command chosen at run time)', () => {
    for (const t of tenants) {
      const starts = t.attempts.get(t.flakyNowId) ?? [];
      assert.equal(starts.length, 2, `tenant ${t.id}: attempts of the job retried without backoff`);
      const rv = t.completed[ORDERS].get(t.flakyNowId);
      assert.equal(rv?.attemptsMade, 1, `tenant ${t.id}: the job retried at once completed on its second attempt`);
    }
  });

  it('repeats a scheduled job exactly as often as its limit says', async () => {
    // Wait a few more periods: a scheduler that ignores its limit shows up.
    await sleep(3 * REPEAT_EVERY_MS);
    for (const t of tenants) {
      assert.equal(t.ticksCompleted(), REPEAT_LIMIT, `tenant ${t.id}: repetitions of the scheduled job`);
      // Repetitions are ids repeat:<scheduler>:<slot in ms> on a grid of
      // REPEAT_EVERY_MS. A repetition taken more than a period late makes
      // BullMQ's updateJobScheduler skip the missed slots (its catch-up
      // branch), so on a loaded host two slots can be 2 or more periods
      // apart; off the grid or out of order would be a fence bug.
      const slots = [...t.completed[ORDERS].entries()].filter(([, rv]) => rv?.kind === 'tick')
        .map(([id]) => Number(id.split(':').pop())).sort((x, y) => x - y);
      for (let i = 1; i < slots.length; i++) {
        const gap = slots[i] - slots[i - 1];
        assert.ok(gap > 0 && gap % REPEAT_EVERY_MS === 0, `tenant ${t.id}: repetition slots ${slots.join(', ')} are not ${REPEAT_EVERY_MS} ms apart or a multiple of it`);
      }
    }
  });

  it("completes flows whose parent sees its children's results", () => {
    for (const t of tenants) {
      const parents = [...t.completed[ORDERS].values()].filter((rv) => rv.kind === 'parent');
      assert.equal(parents.length, FLOWS, `tenant ${t.id}: flow parents completed`);
      for (const p of parents) {
        assert.equal(p.children.length, 1 + SHIPPING_CHILDREN_PER_FLOW, `tenant ${t.id}: children values of a parent`);
        for (const c of p.children) {
          assert.equal(c.tenant, t.id, `tenant ${t.id}: a child value of another tenant`);
          assert.equal(c.nonce, t.nonce, `tenant ${t.id}: a child value of another tenant`);
        }
        assert.deepEqual(p.children.map((c) => c.queue).sort(), [ORDERS, ...Array(SHIPPING_CHILDREN_PER_FLOW).fill(SHIPPING)].sort());
      }
    }
  });

  it("counts and lists only the tenant's own jobs", async () => {
    for (const t of tenants) {
      const counts = {
        [ORDERS]: await t.queues[ORDERS].getJobCounts('completed', 'failed', 'delayed', 'wait', 'active', 'waiting-children'),
        [SHIPPING]: await t.queues[SHIPPING].getJobCounts('completed', 'failed', 'delayed', 'wait', 'active', 'waiting-children'),
      };
      console.log(`figures: tenant ${t.id} job counts ${JSON.stringify(counts)}`);
      assert.deepEqual(counts[ORDERS], { completed: EXPECTED_ORDERS, failed: 0, delayed: 0, wait: 0, active: 0, 'waiting-children': 0 }, `tenant ${t.id}: job counts of ${ORDERS}`);
      assert.deepEqual(counts[SHIPPING], { completed: EXPECTED_SHIPPING, failed: 0, delayed: 0, wait: 0, active: 0, 'waiting-children': 0 }, `tenant ${t.id}: job counts of ${SHIPPING}`);
      for (const q of [ORDERS, SHIPPING]) {
        const jobs = await t.queues[q].getJobs(['completed']);
        assert.equal(jobs.length, q === ORDERS ? EXPECTED_ORDERS : EXPECTED_SHIPPING, `tenant ${t.id}: completed jobs listed on ${q}`);
        for (const job of jobs) {
          assert.equal(job.data.nonce, t.nonce, `tenant ${t.id}: job ${q}/${job.id} listed with another tenant's data`);
          assert.equal(await job.getState(), 'completed', `tenant ${t.id}: state of ${q}/${job.id}`);
        }
      }
    }
  });

  it("lists only the tenant's own workers in getWorkers", async () => {
    for (const t of tenants) {
      for (const q of [ORDERS, SHIPPING]) {
        // BullMQ puts the queue name in name and the client name in rawname.
        const workers = await t.queues[q].getWorkers();
        assert.ok(workers.every((w) => w.name === q), `tenant ${t.id}: getWorkers of ${q} names another queue`);
        const names = workers.map((w) => w.rawname).sort();
        const want = t.workerNames[q].map((n) => `bull:${b64(q)}:w:${n}`).sort();
        assert.deepEqual(names, want, `tenant ${t.id}: getWorkers of ${q}`);
      }
    }
  });

  it('leaves nothing outside the tenants in Redis, and no data of one tenant in the other', async () => {
    const { keys, outside, values } = await dumpUpstream(admin, ids);
    console.log(`figures: upstream keys=${keys.length} (${ids.map((id) => `tenant ${id}=${values[id].length}`).join(', ')})`);
    assert.deepEqual(outside, [], `keys outside ${ids.map((id) => `tenant:${id}:`).join(', ')}`);
    for (const t of tenants) {
      assert.ok(keys.some((k) => k.startsWith(`tenant:${t.id}:bull:${ORDERS}:`)), `no ${ORDERS} keys of tenant ${t.id} upstream`);
      assert.ok(keys.some((k) => k.startsWith(`tenant:${t.id}:bull:${SHIPPING}:`)), `no ${SHIPPING} keys of tenant ${t.id} upstream`);
    }
    const anyPrefix = new RegExp(`tenant:(${ids.map(escapeRegExp).join('|')}):`);
    for (const t of tenants) {
      const mine = values[t.id];
      assert.ok(keysWhoseValue(mine, t.nonce).length > 0, `tenant ${t.id}'s payloads are not in tenant ${t.id}'s keys`);
      for (const other of tenants.filter((o) => o !== t)) {
        assert.deepEqual(keysWhoseValue(mine, other.nonce), [], `keys of tenant ${t.id} holding tenant ${other.id}'s payloads`);
      }
      // Scripts see the application's own key names, so the key names
      // BullMQ stores as values (job parents, processed children) are
      // unprefixed, and no value names a key with a tenant prefix.
      assert.ok(keysWhoseValue(mine, `bull:${SHIPPING}:`).length > 0, `no key name stored as a value in tenant ${t.id}'s keys`);
      assert.deepEqual(keysWhoseValue(mine, anyPrefix), [], `keys of tenant ${t.id} whose values hold a tenant prefix`);
    }
  });

  // Last: shutting BullMQ down must be as quiet as it is against Redis itself,
  // where closing a worker or QueueEvents blocked in BZPOPMIN / XREAD BLOCK
  // emits no error.
  it('closes every worker, event listener, flow producer and queue without an error', async () => {
    for (const t of tenants) {
      // Stop the scheduler so that no new repetition is queued while closing.
      await t.queues[ORDERS].removeJobScheduler('tick');
    }
    const closeErrors = (await Promise.all(tenants.map((t) => t.close()))).flat();
    console.log(`figures: ${tenants.map((t) => t.summary()).join('; ')}; total ${Date.now() - started} ms`);
    assert.deepEqual(closeErrors, [], 'closing BullMQ objects failed');
    for (const t of tenants) {
      assert.deepEqual(t.errors, [], `tenant ${t.id}: errors emitted while closing`);
    }
  });
});
