#!/usr/bin/env node
// Real-client interop test: MQTT 5 enhanced authentication with MQTT.js (npm `mqtt`)
// through its `handleAuth` hook, SCRAM-SHA-256 (RFC 5802 / RFC 7677) computed here with
// node's crypto.
//
// Usage: node mqttjs_scram.js HOST PORT USER PASSWORD
//
// The broker must hold SCRAM credentials for USER / PASSWORD. Checks:
//   * CONNECT carries Authentication Method SCRAM-SHA-256 and the client-first message;
//     the broker's AUTH 0x18 (server-first) is answered through handleAuth with AUTH 0x18
//     (client-final); CONNACK 0x00 names the method and carries server-final, whose server
//     signature this client verifies
//   * the same exchange with a wrong password ends in CONNACK 0x86
// Prints PASS lines; exits 0 on success, 1 on the first failure, 2 on timeout.

'use strict'

const crypto = require('crypto')

let mqtt
try {
  mqtt = require('mqtt')
} catch (err) {
  console.log(`FAIL: npm package 'mqtt' not found (run 'npm ci' in ${__dirname}): ${err.message}`)
  process.exit(1)
}

const METHOD = 'SCRAM-SHA-256'
const [host, port, user, password] = process.argv.slice(2)
setTimeout(() => {
  console.log('FAIL: global timeout')
  process.exit(2)
}, 20000).unref()

function fail (message) {
  console.log(`FAIL: ${message}`)
  process.exit(1)
}

function pass (message) {
  console.log(`PASS: ${message}`)
}

const hmac = (key, data) => crypto.createHmac('sha256', key).update(data).digest()
const sha256 = (data) => crypto.createHash('sha256').update(data).digest()
const xor = (a, b) => Buffer.from(a.map((x, i) => x ^ b[i]))

// One SCRAM client exchange: first(), final(serverFirst), verify(serverFinal).
function scram (username, secret) {
  const nonce = crypto.randomBytes(18).toString('base64')
  const bare = `n=${username.replace(/=/g, '=3D').replace(/,/g, '=2C')},r=${nonce}`
  let serverSignature = null
  return {
    first: () => Buffer.from(`n,,${bare}`),
    final: (serverFirst) => {
      const text = serverFirst.toString()
      const fields = Object.fromEntries(text.split(',').map((f) => [f[0], f.slice(2)]))
      if (!fields.r.startsWith(nonce)) throw new Error('server nonce does not extend ours')
      const salted = crypto.pbkdf2Sync(secret, Buffer.from(fields.s, 'base64'), Number(fields.i), 32, 'sha256')
      const clientKey = hmac(salted, 'Client Key')
      const withoutProof = `c=biws,r=${fields.r}`
      const authMessage = `${bare},${text},${withoutProof}`
      const proof = xor(clientKey, hmac(sha256(clientKey), authMessage))
      serverSignature = hmac(hmac(salted, 'Server Key'), authMessage).toString('base64')
      return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)
    },
    verify: (serverFinal) => serverFinal.toString() === `v=${serverSignature}`
  }
}

function attempt (secret) {
  return new Promise((resolve) => {
    const exchange = scram(user, secret)
    const client = mqtt.connect(`mqtt://${host}:${port}`, {
      protocolVersion: 5,
      clientId: `mqttjs-scram-${crypto.randomBytes(4).toString('hex')}`,
      reconnectPeriod: 0,
      properties: { authenticationMethod: METHOD, authenticationData: exchange.first() }
    })
    let continued = false
    client.handleAuth = (packet, callback) => {
      if (packet.reasonCode !== 0x18) return callback(new Error(`AUTH reason ${packet.reasonCode}`))
      continued = true
      try {
        const data = exchange.final(packet.properties.authenticationData)
        callback(null, {
          cmd: 'auth',
          reasonCode: 0x18,
          properties: { authenticationMethod: METHOD, authenticationData: data }
        })
      } catch (err) {
        callback(err)
      }
    }
    client.on('connect', (connack) => {
      const props = connack.properties || {}
      const verified = props.authenticationMethod === METHOD &&
        props.authenticationData !== undefined &&
        exchange.verify(props.authenticationData)
      client.end(true)
      resolve({ code: connack.reasonCode || 0, continued, verified })
    })
    client.on('error', (err) => {
      client.end(true)
      resolve({ code: err.code, continued, verified: false })
    })
  })
}

async function main () {
  const ok = await attempt(password)
  if (!ok.continued) fail('no AUTH 0x18 from the broker')
  pass('AUTH 0x18 with server-first, answered through handleAuth')
  if (ok.code !== 0) fail(`CONNACK ${ok.code}, expected 0`)
  pass('CONNACK 0x00')
  if (!ok.verified) fail('CONNACK lacks the method or a valid server signature')
  pass('CONNACK names SCRAM-SHA-256 and its server signature verifies')
  const bad = await attempt(`${password}-wrong`)
  if (bad.code !== 0x86) fail(`wrong password: CONNACK ${bad.code}, expected 134`)
  pass('wrong password: CONNACK 0x86')
  console.log('ALL PASSED')
  process.exit(0)
}

main().catch((err) => fail(err.stack || String(err)))
