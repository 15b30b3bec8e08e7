// BullMQ 6.7's side of Stem's benchmark.
//
//   node bench.js worker URL CONCURRENCY     run jobs until SIGTERM
//   node bench.js SCENARIO URL COUNT CAP_S   run one scenario as a client
//
// Scenarios: warmup, noop, chord, submit, chain. The client prints one JSON
// line. Chords and chains are flows: a parent waits for its children, and
// reads their values with getChildrenValues().
'use strict';

const { Queue, Worker, FlowProducer, QueueEvents } = require('bullmq');
const IORedis = require('ioredis');

const QUEUE = 'bench';

function now() {
  // Wall-clock milliseconds with sub-millisecond resolution.
  return performance.timeOrigin + performance.now();
}

function connect(url) {
  return new IORedis(url, { maxRetriesPerRequest: null });
}

async function runWorker(url, concurrency) {
  let lastMemberDone = 0;
  const worker = new Worker(
    QUEUE,
    async (job) => {
      switch (job.name) {
        case 'noop':
          return null;
        case 'member':
          return job.data.i;
        case 'collect': {
          const start = now();
          const values = Object.values(await job.getChildrenValues());
          const read = now();
          let sum = 0;
          for (const value of values) sum += value;
          return { start, read, lastMemberDone, n: values.length, sum };
        }
        case 'step':
          return now();
        default:
          throw new Error(`unknown job name ${job.name}`);
      }
    },
    { connection: connect(url), concurrency },
  );
  worker.on('completed', (job) => {
    if (job.name === 'member') lastMemberDone = now();
  });
  worker.on('error', (err) => console.error(err));
  await worker.waitUntilReady();
  console.error('ready');
  // The harness stops the worker only when it is idle, so exit at once
  // rather than wait for the blocking fetch to time out.
  process.on('SIGTERM', () => process.exit(0));
  process.on('SIGINT', () => process.exit(0));
}

function chordFlow(count) {
  const children = new Array(count);
  for (let i = 0; i < count; i++) {
    children[i] = { name: 'member', queueName: QUEUE, data: { i } };
  }
  return { name: 'collect', queueName: QUEUE, data: {}, children };
}

async function runNoop(url, count, capS) {
  const connection = connect(url);
  const queue = new Queue(QUEUE, { connection, streams: { events: { maxLen: 100000 } } });
  const events = new QueueEvents(QUEUE, { connection: connect(url) });
  await events.waitUntilReady();

  let done = 0;
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  events.on('completed', () => {
    done += 1;
    if (done === count) finish();
  });

  const started = performance.now();
  for (let offset = 0; offset < count; offset += 1000) {
    const batch = [];
    for (let i = offset; i < Math.min(count, offset + 1000); i++) {
      batch.push({ name: 'noop', data: {} });
    }
    await queue.addBulk(batch);
  }
  const submitted = performance.now();
  const capped = await Promise.race([
    finished.then(() => false),
    new Promise((resolve) => setTimeout(() => resolve(true), capS * 1000)),
  ]);
  const ended = performance.now();
  await events.close();
  await queue.close();

  if (capped) return { capped: true, done, submit_s: (submitted - started) / 1000 };
  const total = (ended - started) / 1000;
  return { submit_s: (submitted - started) / 1000, total_s: total, tasks_per_s: count / total };
}

async function runChord(url, count, capS) {
  const connection = connect(url);
  const flows = new FlowProducer({ connection });
  const events = new QueueEvents(QUEUE, { connection: connect(url) });
  await events.waitUntilReady();

  const flow = chordFlow(count);
  const startedWall = now();
  const started = performance.now();
  const tree = await flows.add(flow);
  const submitted = performance.now();
  const out = { submit_s: (submitted - started) / 1000 };
  let value;
  try {
    const remaining = Math.max(1, capS * 1000 - (submitted - started));
    value = await tree.job.waitUntilFinished(events, remaining);
  } catch (err) {
    if (!String(err).includes('timed out')) throw err;
    out.capped = true;
  }

  if (!out.capped) {
    out.get_s = (performance.now() - started) / 1000;
    if (value.n !== count || value.sum !== (count * (count - 1)) / 2) {
      throw new Error(`the chord's callback received wrong input: ${JSON.stringify(value)}`);
    }
    const queue = new Queue(QUEUE, { connection });
    const parent = await queue.getJob(tree.job.id);
    await queue.close();
    out.callback_stored_s = (parent.finishedOn - startedWall) / 1000;
    out.fanin_ms = value.read - value.lastMemberDone;
    out.fanin_to_start_ms = value.start - value.lastMemberDone;
    out.input_read_ms = value.read - value.start;
  }
  await events.close();
  await flows.close();
  return out;
}

async function runSubmit(url, count) {
  const flows = new FlowProducer({ connection: connect(url) });
  const flow = chordFlow(count);
  const started = performance.now();
  await flows.add(flow);
  const out = { submit_s: (performance.now() - started) / 1000 };
  await flows.close();
  return out;
}

async function runChain(url, count, capS) {
  const connection = connect(url);
  const flows = new FlowProducer({ connection });
  const events = new QueueEvents(QUEUE, { connection: connect(url) });
  await events.waitUntilReady();

  // The first step is the deepest child; each later step is its parent.
  let node = { name: 'step', queueName: QUEUE, data: { k: 0 } };
  for (let k = 1; k < count; k++) {
    node = { name: 'step', queueName: QUEUE, data: { k }, children: [node] };
  }
  const started = performance.now();
  const tree = await flows.add(node);
  try {
    await tree.job.waitUntilFinished(events, capS * 1000);
  } catch (err) {
    if (!String(err).includes('timed out')) throw err;
    await events.close();
    await flows.close();
    return { capped: true };
  }
  const total = (performance.now() - started) / 1000;

  // Each step's value is when its body started; read them root first.
  const queue = new Queue(QUEUE, { connection });
  const starts = [];
  let walk = tree;
  while (walk) {
    const job = await queue.getJob(walk.job.id);
    starts.push(Number(job.returnvalue));
    walk = walk.children ? walk.children[0] : null;
  }
  starts.reverse();
  const hops = [];
  for (let i = 1; i < starts.length; i++) hops.push(starts[i] - starts[i - 1]);
  const sorted = [...hops].sort((a, b) => a - b);
  await events.close();
  await flows.close();
  await queue.close();
  return {
    total_s: total,
    hop_p50_ms: sorted[Math.floor((sorted.length - 1) / 2)],
    hop_p90_ms: sorted[Math.floor(sorted.length * 0.9)],
    hops: hops.length,
  };
}

async function runWarmup(url) {
  await runNoop(url, 20, 30);
  await runChord(url, 10, 30);
  return {};
}

async function main() {
  const [role, url, arg1, arg2] = process.argv.slice(2);
  if (role === 'worker') return runWorker(url, Number(arg1));
  const count = Number(arg1);
  const capS = Number(arg2 || 60);
  let out;
  if (role === 'warmup') out = await runWarmup(url);
  else if (role === 'noop') out = await runNoop(url, count, capS);
  else if (role === 'chord') out = await runChord(url, count, capS);
  else if (role === 'submit') out = await runSubmit(url, count);
  else if (role === 'chain') out = await runChain(url, count, capS);
  else throw new Error(`unknown role ${role}; see the comment at the top`);
  console.log(JSON.stringify(out));
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
