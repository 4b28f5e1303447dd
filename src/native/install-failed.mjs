// Runs when `npm install` could not build native/ (no compiler, no headers).
// The server still works: every native function has a TypeScript twin, only slower.
console.warn(
  'diffswap: the native addon did not build; falling back to the TypeScript twins.\n' +
    '  Install a C++ toolchain (apt-get install build-essential python3) and run `npm rebuild`.',
);
