/**
 * Loads the native addon built from native/ by `npm install`. Callers never import the
 * `.node` file themselves: they ask `nativeAddon()` and fall back to their TypeScript twin
 * (or raise a clear error) when it returns null. `DIFFSWAP_NATIVE=0` forces the twins, so
 * tests and benchmarks can compare both paths in one checkout.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The raw addon object; each module that wraps a native call declares its own view of it. */
export type NativeAddon = Record<string, unknown> & { abiVersion: number };

let cached: NativeAddon | null | undefined;
let loadError: string | null = null;

/** Path of the built addon, relative to this file in both src/ and dist/src/. */
function addonPaths(): string[] {
  const here = fileURLToPath(new URL('.', import.meta.url));
  return [
    `${here}../../native/build/Release/diffswap_native.node`,
    `${here}../../../native/build/Release/diffswap_native.node`,
  ];
}

/** The addon, or null when it is not built or disabled; see `nativeLoadError()` for why. */
export function nativeAddon(): NativeAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.env.DIFFSWAP_NATIVE === '0') {
    loadError = 'disabled by DIFFSWAP_NATIVE=0';
    return cached;
  }
  const require = createRequire(import.meta.url);
  const errors: string[] = [];
  for (const path of addonPaths()) {
    try {
      cached = require(path) as NativeAddon;
      loadError = null;
      return cached;
    } catch (error) {
      errors.push(`${path}: ${(error as Error).message.split('\n')[0]}`);
    }
  }
  loadError = `native addon not loaded (run \`npm rebuild\`): ${errors.join('; ')}`;
  return cached;
}

/** Why the addon is not in use, or null when it is. */
export function nativeLoadError(): string | null {
  nativeAddon();
  return loadError;
}
