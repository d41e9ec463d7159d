import { chromium } from 'playwright-core';
const base = 'http://127.0.0.1:3001/';
const b = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await b.newPage();
page.on('console', (m) => console.log('console:', m.text()));
await page.goto(base);
await page.waitForFunction(() => document.documentElement.classList.contains('st-connected'));
await page.fill('#new', 'Water the plants');
await page.press('#new', 'Enter');
await page.waitForFunction(() => [...document.querySelectorAll('#list .text')].some((x) => x.textContent === 'Water the plants'));
await page.click('#list li:last-child input[type=checkbox]');
await page.waitForTimeout(300);
await page.screenshot({ path: '/tmp/user1.png' });
// a huge paste, submitted
const big = 'y'.repeat(80000);
await page.fill('#new', big);
await page.press('#new', 'Enter');
await page.waitForTimeout(500);
console.log('after big submit: classes', await page.evaluate(() => document.documentElement.className),
  'flash', await page.evaluate(() => { const f = document.querySelector('[st-flash]'); return f && !f.hidden ? f.textContent : null; }),
  'field kept', (await page.inputValue('#new')).length, 'pending', await page.evaluate(() => document.querySelector('[data-st-root]').getAttribute('data-st-pending')),
  'busy', await page.evaluate(() => document.getElementById('add').getAttribute('aria-busy')));
await page.screenshot({ path: '/tmp/user2.png' });
await page.fill('#new', 'Then this');
await page.press('#new', 'Enter');
await page.waitForFunction(() => [...document.querySelectorAll('#list .text')].some((x) => x.textContent === 'Then this'), null, { timeout: 5000 }).then(() => console.log('small add after the refusal: ok'), () => console.log('small add LOST'));
console.log('items', await page.$$eval('#list .text', (l) => l.map((x) => x.textContent).join(' | ')));
await b.close();
