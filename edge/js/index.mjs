// Lambda@Edge origin-response handler (Node.js 22): a thin shell around the Rust addon.
// The addon and edgethumb.json sit beside this file; init() runs once per container, at
// import, so a missing or invalid config fails the cold start with a clear message.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const addon = createRequire(import.meta.url)('./edgethumb.node');
addon.init(fileURLToPath(new URL('./edgethumb.json', import.meta.url)));

export async function handler(event) {
  const generated = await addon.handle(JSON.stringify(event));
  // null: a hit (or a real 404) - hand CloudFront its own response back, untouched.
  return generated === null ? event.Records[0].cf.response : JSON.parse(generated);
}
