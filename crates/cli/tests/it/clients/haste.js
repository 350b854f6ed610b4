// jest-haste-map crawling a project with watchman (through `watchman` on
// PATH, which is cj) or with its node crawler; prints the sorted files.
//     node haste.js ROOT watchman|node CACHE_DIR
const path = require('path');
const HasteMap = require(path.join(process.env.CJ_TEST_CLIENTS, 'node_modules', 'jest-haste-map')).default;
const [root, crawler, cache] = process.argv.slice(2);
(async () => {
  const map = await HasteMap.create({
    id: 'cj-test', extensions: ['js', 'json'], maxWorkers: 1, platforms: [],
    rootDir: root, roots: [root], useWatchman: crawler === 'watchman',
    retainAllFiles: true, cacheDirectory: cache,
  });
  const {hasteFS} = await map.build();
  console.log(JSON.stringify(hasteFS.getAllFiles().map((f) => path.relative(root, f)).sort()));
})().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
