#!/usr/bin/env node
// Browser test of Tern's dashboard: headless Chromium (the Debian package) driven by
// playwright-core loads the dashboard, subscribes to a topic filter through the page's
// form (the page then reads /sse with EventSource), has mosquitto_pub publish a message,
// and waits for it to appear in the live view. With TERN_ADMIN_TOKEN and TERN_KICK_CLIENT
// set, also uses the clients table: enters the admin token, filters, sorts, and kicks the
// client TERN_KICK_CLIENT with its button; and checks the activity charts are drawn.
// Keeps a screenshot.
//
// Usage: node browser.js HTTP_URL MQTT_HOST MQTT_PORT SCREENSHOT_PATH
//
// Prints PASS lines; exits 0 on success, 1 on failure, 2 on global timeout
// (default 60 s, env BROWSER_TIMEOUT).

'use strict'

const { spawnSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')

let chromium
try {
  ({ chromium } = require('playwright-core'))
} catch (err) {
  console.log(`FAIL: npm package 'playwright-core' not found (run 'npm ci' in ${__dirname}): ${err.message}`)
  process.exit(1)
}

const [httpUrl, mqttHost, mqttPort, screenshot] = process.argv.slice(2)
if (!screenshot) {
  console.log('usage: node browser.js HTTP_URL MQTT_HOST MQTT_PORT SCREENSHOT_PATH')
  process.exit(1)
}
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium'
const TIMEOUT_S = Number(process.env.BROWSER_TIMEOUT || 60)
const WAIT_MS = 15000

const timer = setTimeout(() => {
  console.log(`FAIL: global timeout after ${TIMEOUT_S} s`)
  process.exit(2)
}, TIMEOUT_S * 1000)

async function main () {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-chromium-'))
  // A fresh profile directory: playwright passes it as --user-data-dir.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: EXECUTABLE,
    headless: true,
    viewport: { width: 1100, height: 720 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'
    ]
  })
  try {
    const page = context.pages()[0] || await context.newPage()
    const errors = []
    page.on('pageerror', (e) => errors.push(e.message))
    await page.goto(httpUrl, { waitUntil: 'load' })
    await page.waitForFunction(() => /^\d+$/.test(document.getElementById('clients').textContent), null, { timeout: WAIT_MS })
    console.log('PASS: dashboard loaded and shows /api/stats')

    const topic = `browser/${Date.now()}/temp`
    await page.fill('#filter', 'browser/+/temp')
    await page.click('#subscribe')
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('subscribed to'), null, { timeout: WAIT_MS })
    console.log('PASS: subscribed through /sse')

    const payload = 'hello from mosquitto_pub 21.5'
    const pub = spawnSync('mosquitto_pub', ['-h', mqttHost, '-p', String(mqttPort), '-q', '1', '-t', topic, '-m', payload], { encoding: 'utf8' })
    if (pub.status !== 0) throw new Error(`mosquitto_pub failed: ${pub.stderr}`)
    await page.waitForFunction((p) => document.getElementById('messages').textContent.includes(p), payload, { timeout: WAIT_MS })
    const row = await page.textContent('#messages tr')
    if (!row.includes(topic)) throw new Error(`row without the topic: ${row}`)
    console.log('PASS: message published with mosquitto_pub shown live')

    // Two series per chart, each with a few points (one per stats poll).
    await page.waitForFunction(() => {
      const lines = document.querySelectorAll('#chart-messages polyline, #chart-connections polyline')
      return lines.length === 4 && [...lines].every((l) => l.getAttribute('points').split(' ').length >= 3)
    }, null, { timeout: WAIT_MS })
    console.log('PASS: activity charts drawn')

    const adminToken = process.env.TERN_ADMIN_TOKEN
    const victim = process.env.TERN_KICK_CLIENT
    if (adminToken && victim) {
      await clientsTable(page, adminToken, victim)
    }

    // Let one stats poll count the SSE client, then keep the picture.
    await page.waitForFunction(() => Number(document.getElementById('bridge-clients').textContent) >= 1, null, { timeout: WAIT_MS })
    fs.mkdirSync(path.dirname(screenshot), { recursive: true })
    await page.screenshot({ path: screenshot, fullPage: true })
    console.log(`PASS: screenshot ${screenshot}`)
    if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`)
  } finally {
    await context.close()
    fs.rmSync(profile, { recursive: true, force: true })
  }
}

// The clients table: token, rows from /api/v1/clients, filter, sort, kick.
async function clientsTable (page, adminToken, victim) {
  const row = `#clients-table tr[data-client-id="${victim}"]`
  await page.fill('#admin-token', adminToken)
  await page.click('#admin-connect')
  await page.waitForSelector(row, { timeout: WAIT_MS })
  const total = await page.$$eval('#clients-table tr', (rows) => rows.length)
  if (total < 2) throw new Error(`expected at least two clients, got ${total}`)
  console.log(`PASS: clients table lists ${total} clients`)
  await page.click('#clients-head th[data-key="client_id"]')
  const ids = await page.$$eval('#clients-table tr', (rows) => rows.map((r) => r.dataset.clientId))
  const sorted = [...ids].sort().reverse()
  if (ids.join() !== sorted.join()) throw new Error(`not sorted descending: ${ids}`)
  console.log('PASS: clients table sorts by client id')
  await page.fill('#client-filter', victim)
  const shown = await page.$$eval('#clients-table tr', (rows) => rows.map((r) => r.dataset.clientId))
  if (shown.length !== 1 || shown[0] !== victim) throw new Error(`filter shows ${shown}`)
  console.log('PASS: clients table filters')
  await page.click(`${row} button.kick`)
  await page.waitForFunction((v) => document.getElementById('admin-status').textContent === 'kicked ' + v, victim, { timeout: WAIT_MS })
  await page.waitForSelector(row, { state: 'detached', timeout: WAIT_MS })
  console.log('PASS: kick button disconnected the client')
  await page.fill('#client-filter', '')
}

main().then(() => {
  clearTimeout(timer)
  process.exit(0)
}, (err) => {
  console.log(`FAIL: ${err.message}`)
  process.exit(1)
})
