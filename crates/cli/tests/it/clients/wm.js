// fb-watchman (the client jest uses) driving cj's Watchman endpoint, for
// crates/cli/tests/it/watchman.rs. Same commands as wm.py; names are hex
// of their UTF-8 bytes (fb-watchman decodes names as UTF-8).
const path = require('path');
const fs = require('fs');
const watchman = require(path.join(process.env.CJ_TEST_CLIENTS, 'node_modules', 'fb-watchman'));
const [cmd, root, arg, arg2] = process.argv.slice(2);
const client = new watchman.Client();
const hex = (s) => Buffer.from(s, 'utf8').toString('hex');
const fail = (e) => { console.error(String(e)); process.exit(1); };
const run = (c) => new Promise((ok, no) => client.command(c, (e, r) => (e ? no(e) : ok(r))));
(async () => {
  const caps = await new Promise((ok, no) =>
    client.capabilityCheck({optional: [], required: ['relative_root']}, (e, r) => (e ? no(e) : ok(r))));
  if (!caps.capabilities.relative_root) fail('no relative_root');
  const w = await run(['watch-project', root]);
  let out;
  if (cmd === 'clock') {
    out = {clock: (await run(['clock', w.watch])).clock};
  } else if (cmd === 'query') {
    const q = {since: arg, fields: ['name', 'exists', 'type']};
    if (w.relative_path) q.relative_root = w.relative_path;
    const r = await run(['query', w.watch, q]);
    out = {fresh: r.is_fresh_instance, clock: r.clock, files: r.files.map((f) => hex(f.name))};
  } else if (cmd === 'subscribe') {
    await run(['subscribe', w.watch, 's', {since: arg, fields: ['name']}]);
    const seen = await new Promise((ok) => {
      client.on('subscription', (u) => { if ((u.files || []).includes(arg2)) ok(true); });
      fs.writeFileSync(path.join(root, arg2), 'x');
      setTimeout(() => ok(false), 30000);
    });
    out = {seen};
  } else {
    fail('unknown command ' + cmd);
  }
  client.end();
  console.log(JSON.stringify(out));
  process.exit(0);
})().catch(fail);
