#!/usr/bin/env node
// Real-client interop test: MQTT.js (npm `mqtt`, v5 of the library) against a broker.
//
// Usage: node mqttjs_v5.js HOST PORT [URL]
//
//   HOST PORT  broker address; connects to mqtt://HOST:PORT
//   URL        optional: connect to this URL instead (e.g. ws://127.0.0.1:8080/mqtt)
//
// Checks (MQTT 5.0, protocolVersion 5):
//   * connect (clean start, session expiry), subscribe with a Subscription Identifier
//   * publish QoS 0/1/2 with user properties (incl. a repeated key), content type,
//     payload format indicator, response topic, correlation data; each arrives
//     exactly once with the properties intact and the subscription identifier set
//   * retained delivery to a new subscriber (retain flag set), then clearing it
// and MQTT 3.1.1 (protocolVersion 4): subscribe + publish QoS 0/1/2, retained delivery.
//
// Every run uses a unique topic prefix and client ids. Prints one PASS line per check;
// exits 0 on success, 1 on the first failure, 2 on global timeout (default 20 s,
// env INTEROP_TIMEOUT).

'use strict'

const crypto = require('crypto')

let mqtt
try {
  mqtt = require('mqtt')
} catch (err) {
  console.log(`FAIL: npm package 'mqtt' not found (run 'npm ci' in ${__dirname}): ${err.message}`)
  process.exit(1)
}

const GLOBAL_TIMEOUT_S = Number(process.env.INTEROP_TIMEOUT || 20)
const WAIT_MS = 5000 // max wait for something that should happen
const QUIET_MS = 1000 // how long to watch for something that must NOT happen

const RUN = crypto.randomBytes(6).toString('hex')
const PREFIX = `tern-interop/mqttjs/${RUN}`
const SUB_ID = 4242

class Failure extends Error {}

function check (cond, what) {
  if (!cond) throw new Failure(what)
}

function pass (what) {
  console.log(`PASS: ${what}`)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const clients = []

function brokerUrl (host, port, url) {
  if (url) return url
  const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host
  return `mqtt://${h}:${port}`
}

// Connect and attach an inbox. Never reconnects: a reconnect would hide broker bugs.
async function connect (url, name, protocolVersion, extra = {}) {
  const opts = {
    clientId: `tern-js-${name}-${RUN}`,
    protocolVersion,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: WAIT_MS,
    keepalive: 30,
    ...extra
  }
  if (protocolVersion === 5) {
    opts.properties = { sessionExpiryInterval: 60, ...(extra.properties || {}) }
  }
  let client
  try {
    client = await mqtt.connectAsync(url, opts, false)
  } catch (err) {
    throw new Failure(`[${name}] v${protocolVersion} connect to ${url} failed: ${err.message}`)
  }
  clients.push(client)
  client.inbox = []
  client.on('message', (topic, payload, packet) => client.inbox.push({ topic, payload, packet }))
  client.on('error', (err) => console.log(`note: [${name}] client error: ${err.message}`))
  client.tname = name
  return client
}

function on (client, topic) {
  return client.inbox.filter((m) => m.topic === topic)
}

async function waitFor (client, topic, n, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs
  while (on(client, topic).length < n) {
    check(Date.now() < deadline,
      `[${client.tname}] timed out after ${timeoutMs} ms waiting for ${n} message(s) on ${topic} ` +
      `(got ${on(client, topic).length})`)
    await sleep(20)
  }
  return on(client, topic)
}

async function subscribe (client, topic, qos, properties) {
  const opts = { qos }
  if (properties) opts.properties = properties
  let granted
  try {
    granted = await client.subscribeAsync(topic, opts)
  } catch (err) {
    throw new Failure(`[${client.tname}] subscribe ${topic} failed: ${err.message}`)
  }
  check(Array.isArray(granted) && granted.length === 1,
    `[${client.tname}] SUBACK for ${topic}: unexpected ${JSON.stringify(granted)}`)
  check(granted[0].qos === qos,
    `[${client.tname}] SUBACK for ${topic}: granted ${granted[0].qos}, wanted QoS ${qos}`)
}

async function publish (client, topic, payload, opts) {
  try {
    await client.publishAsync(topic, payload, opts)
  } catch (err) {
    throw new Failure(`[${client.tname}] QoS ${opts.qos} publish to ${topic} failed: ${err.message}`)
  }
}

function asList (v) {
  if (v === undefined) return []
  return Array.isArray(v) ? v : [v]
}

// ---------------------------------------------------------------------------

async function testV5 (url) {
  const sub = await connect(url, 'sub5', 5)
  const flags = sub.connackPacket || {}
  pass(`v5 connect with clean start + session expiry (session present: ${!!flags.sessionPresent})`)
  await subscribe(sub, `${PREFIX}/v5/#`, 2, { subscriptionIdentifier: SUB_ID })
  pass(`v5 subscribe ${PREFIX}/v5/# with subscription identifier ${SUB_ID}`)

  const pub = await connect(url, 'pub5', 5)
  const sent = []
  for (const qos of [0, 1, 2]) {
    const topic = `${PREFIX}/v5/q${qos}`
    const payload = Buffer.from(JSON.stringify({ qos, run: RUN, text: 'h\u00e9llo' }))
    const properties = {
      payloadFormatIndicator: true,
      contentType: 'application/json',
      responseTopic: `${PREFIX}/reply`,
      correlationData: Buffer.from([0, 1, 2, 0xff, qos]),
      messageExpiryInterval: 300,
      userProperties: { k1: ['v1', 'v1-again'], k2: `q${qos}` }
    }
    sent.push({ qos, topic, payload, properties })
    await publish(pub, topic, payload, { qos, properties })
  }
  for (const s of sent) await waitFor(sub, s.topic, 1)
  await sleep(QUIET_MS)
  for (const s of sent) {
    const msgs = on(sub, s.topic)
    check(msgs.length === 1, `v5 QoS ${s.qos}: expected exactly 1 delivery on ${s.topic}, got ${msgs.length}`)
    const { payload, packet } = msgs[0]
    const p = packet.properties || {}
    check(payload.equals(s.payload), `v5 QoS ${s.qos}: payload ${payload} != ${s.payload}`)
    check(packet.qos === s.qos, `v5 QoS ${s.qos}: delivered with QoS ${packet.qos}`)
    check(!packet.retain, `v5 QoS ${s.qos}: live message has the retain flag set`)
    check(p.payloadFormatIndicator === true, `v5 QoS ${s.qos}: payloadFormatIndicator ${p.payloadFormatIndicator}`)
    check(p.contentType === s.properties.contentType, `v5 QoS ${s.qos}: contentType ${p.contentType}`)
    check(p.responseTopic === s.properties.responseTopic, `v5 QoS ${s.qos}: responseTopic ${p.responseTopic}`)
    check(Buffer.isBuffer(p.correlationData) && p.correlationData.equals(s.properties.correlationData),
      `v5 QoS ${s.qos}: correlationData ${p.correlationData && p.correlationData.toString('hex')}`)
    const up = p.userProperties || {}
    check(JSON.stringify(asList(up.k1)) === JSON.stringify(['v1', 'v1-again']) &&
          JSON.stringify(asList(up.k2)) === JSON.stringify([`q${s.qos}`]) &&
          Object.keys(up).length === 2,
    `v5 QoS ${s.qos}: userProperties ${JSON.stringify(up)}`)
    check(JSON.stringify(asList(p.subscriptionIdentifier)) === JSON.stringify([SUB_ID]),
      `v5 QoS ${s.qos}: subscriptionIdentifier ${JSON.stringify(p.subscriptionIdentifier)} != ${SUB_ID}`)
    check(typeof p.messageExpiryInterval === 'number' && p.messageExpiryInterval > 0 &&
          p.messageExpiryInterval <= 300,
    `v5 QoS ${s.qos}: messageExpiryInterval ${p.messageExpiryInterval} not in (0, 300]`)
    pass(`v5 QoS ${s.qos} delivered once with user properties, content type, sub id intact`)
  }

  // Retained.
  const rtopic = `${PREFIX}/v5/retained`
  const rpayload = Buffer.from(`retained-${RUN}`)
  await publish(pub, rtopic, rpayload, {
    qos: 1, retain: true, properties: { contentType: 'text/plain', userProperties: { r: '1' } }
  })
  await waitFor(sub, rtopic, 1) // live copy (retain flag cleared for existing subscribers)
  const s2 = await connect(url, 'ret5a', 5)
  await subscribe(s2, rtopic, 1, { subscriptionIdentifier: 7 })
  await waitFor(s2, rtopic, 1)
  await sleep(QUIET_MS)
  {
    const msgs = on(s2, rtopic)
    check(msgs.length === 1, `v5 retained: expected 1 message for new subscriber, got ${msgs.length}`)
    const { payload, packet } = msgs[0]
    const p = packet.properties || {}
    check(payload.equals(rpayload), `v5 retained: payload ${payload} != ${rpayload}`)
    check(packet.retain === true, 'v5 retained: retain flag not set for new subscriber')
    check(p.contentType === 'text/plain', `v5 retained: contentType ${p.contentType}`)
    check(JSON.stringify(p.userProperties) === JSON.stringify({ r: '1' }),
      `v5 retained: userProperties ${JSON.stringify(p.userProperties)}`)
    check(JSON.stringify(asList(p.subscriptionIdentifier)) === '[7]',
      `v5 retained: subscriptionIdentifier ${JSON.stringify(p.subscriptionIdentifier)} != 7`)
  }
  pass('v5 retained message delivered to a new subscriber with retain flag and properties')
  await publish(pub, rtopic, Buffer.alloc(0), { qos: 1, retain: true })
  const s3 = await connect(url, 'ret5b', 5)
  await subscribe(s3, rtopic, 1)
  await sleep(QUIET_MS)
  check(on(s3, rtopic).length === 0,
    `v5 retained: after clearing, new subscriber still got ${on(s3, rtopic).length} message(s)`)
  pass('v5 empty retained publish clears the retained message')
}

async function testV4 (url) {
  const sub = await connect(url, 'sub4', 4)
  await subscribe(sub, `${PREFIX}/v4/#`, 2)
  const pub = await connect(url, 'pub4', 4)
  pass('v3.1.1 (protocolVersion 4) connect + subscribe')
  const sent = []
  for (const qos of [0, 1, 2]) {
    const topic = `${PREFIX}/v4/q${qos}`
    const payload = Buffer.from(`v4-q${qos}-${RUN}`)
    sent.push({ qos, topic, payload })
    await publish(pub, topic, payload, { qos })
  }
  for (const s of sent) await waitFor(sub, s.topic, 1)
  await sleep(QUIET_MS)
  for (const s of sent) {
    const msgs = on(sub, s.topic)
    check(msgs.length === 1, `v3.1.1 QoS ${s.qos}: expected exactly 1 delivery, got ${msgs.length}`)
    check(msgs[0].payload.equals(s.payload), `v3.1.1 QoS ${s.qos}: payload ${msgs[0].payload} != ${s.payload}`)
    check(msgs[0].packet.qos === s.qos, `v3.1.1 QoS ${s.qos}: delivered with QoS ${msgs[0].packet.qos}`)
    pass(`v3.1.1 QoS ${s.qos} delivered once`)
  }
  const rtopic = `${PREFIX}/v4/retained`
  const rpayload = Buffer.from(`v4-retained-${RUN}`)
  await publish(pub, rtopic, rpayload, { qos: 1, retain: true })
  const s2 = await connect(url, 'ret4', 4)
  await subscribe(s2, rtopic, 1)
  const msgs = await waitFor(s2, rtopic, 1)
  check(msgs[0].payload.equals(rpayload) && msgs[0].packet.retain === true,
    `v3.1.1 retained: got payload ${msgs[0].payload} retain ${msgs[0].packet.retain}`)
  await publish(pub, rtopic, Buffer.alloc(0), { qos: 1, retain: true }) // don't leave it behind
  pass('v3.1.1 retained message delivered to a new subscriber with retain flag set')
}

async function main () {
  const [host, port, url] = process.argv.slice(2)
  if (!host || !port) {
    console.error('usage: node mqttjs_v5.js HOST PORT [URL]')
    return 64
  }
  const target = brokerUrl(host, port, url)
  const version = require('mqtt/package.json').version
  console.log(`mqtt.js ${version} -> ${target} (prefix ${PREFIX})`)
  try {
    await testV5(target)
    await testV4(target)
  } catch (err) {
    if (err instanceof Failure) console.log(`FAIL: ${err.message}`)
    else console.log(`FAIL: unexpected error: ${err && err.stack ? err.stack : err}`)
    return 1
  } finally {
    await Promise.allSettled(clients.map((c) => c.endAsync(true)))
  }
  console.log('mqttjs_v5: all checks passed')
  return 0
}

const timer = setTimeout(() => {
  console.log(`FAIL: global timeout of ${GLOBAL_TIMEOUT_S}s expired`)
  process.exit(2)
}, GLOBAL_TIMEOUT_S * 1000)

main().then((code) => {
  clearTimeout(timer)
  process.exit(code)
}, (err) => {
  console.log(`FAIL: ${err && err.stack ? err.stack : err}`)
  process.exit(1)
})
