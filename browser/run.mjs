// Runs every `*.test.mjs` here: each exports async test functions. Prints one line per test
// and exits non-zero if any failed.
import { readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv[2];
let failed = 0;
let passed = 0;
for (const file of readdirSync(HERE).filter((f) => f.endsWith(".test.mjs")).sort()) {
  const tests = await import(pathToFileURL(path.join(HERE, file)));
  for (const [name, test] of Object.entries(tests)) {
    if (only && !name.includes(only)) continue;
    const started = Date.now();
    try {
      await test();
      passed += 1;
      console.log(`ok      ${file} ${name} (${Date.now() - started} ms)`);
    } catch (error) {
      failed += 1;
      console.log(`FAILED  ${file} ${name}\n${error.stack ?? error}`);
    }
  }
}
console.log(`browser tests: ${passed} passed, ${failed} failed (screenshots in browser/artifacts)`);
process.exit(failed === 0 ? 0 : 1);
