// Headless Chromium against the approvals page, as a person would use it:
//   node approve.mjs PAGE_URL USER OPERATION_TEXT SCREENSHOT.png
// Signs in through the OIDC issuer's login and consent pages, waits for the pending request whose
// operation contains OPERATION_TEXT to appear (live, without reloading), takes a screenshot, clicks
// "Approve once" and waits until the request has left the pending list. Prints one JSON line (with
// the card's operation text and button labels).
import { chromium } from 'playwright-core';

const [pageUrl, user, operation, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
const out = { signedIn: false, sawRequest: false, approved: false };
try {
  // The test issuer's certificate comes from a CA the test made; only the issuer's pages use it.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  // A loaded machine makes every step slow; the limits bound the run, they are not the test.
  page.setDefaultTimeout(60000);
  await page.goto(pageUrl);
  const onApprovalsPage = (url) => url.href.startsWith(pageUrl);
  await Promise.all([page.waitForURL((url) => !onApprovalsPage(url)), page.click('#login button')]);
  // The issuer's login and consent pages each end in a submit button; the redirect chain after the
  // last one ends on the approvals page. Wait for whichever comes next rather than assuming a page
  // per navigation: under load a redirect can land between two of them.
  for (let step = 0; step < 6; step++) {
    // The loser of the race times out later: its rejection is caught, not left unhandled.
    const next = await Promise.race([
      page.waitForURL(onApprovalsPage).then(() => 'approvals', () => 'timeout'),
      page.waitForSelector('button[type="submit"]').then(() => 'form', () => 'timeout'),
    ]);
    if (next === 'approvals') break;
    if (next === 'timeout') throw new Error(`sign-in stuck at ${page.url()}`);
    if (await page.locator('input[name="login"]').count()) {
      await page.fill('input[name="login"]', user);
      await page.fill('input[name="password"]', 'any-password');
    }
    // Login and consent share one interaction URL: wait for the next navigation, not a new URL.
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  }
  await page.waitForSelector('#app:not([hidden])');
  out.signedIn = true;
  out.who = await page.textContent('#who');
  const card = page.locator('.card', { hasText: operation });
  await card.first().waitFor();
  out.sawRequest = true;
  out.id = await card.first().getAttribute('data-id');
  out.op = await card.first().locator('.op').textContent();
  out.buttons = await card.first().locator('button').allTextContents();
  await page.screenshot({ path: screenshot, fullPage: true });
  await card.first().locator('button.approve').click();
  await page.locator(`.card[data-id="${out.id}"]`).waitFor({ state: 'detached' });
  out.approved = true;
} catch (e) {
  out.error = String(e && e.message || e).split('\n')[0];
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
