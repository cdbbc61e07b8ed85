'use strict';
// Preloaded into dynalite with `node -r ./scripts/abort-guard.cjs`.
//
// dynalite's request handler rethrows the 'error' event of a request stream
// (`req.on('error', function (err) { throw err })`), so a client that gives
// up on a request while its body is still arriving (a timeout, a cancelled
// context: shardflow's lease writes carry deadlines, and a loaded machine
// makes bodies slow) kills the whole emulator with "Error: aborted"
// (ECONNRESET), and every later test fails with "connection refused". Such
// an error concerns that one request only: note it and keep serving. Any
// other uncaught exception still ends the process, as it would without this
// file.

process.on('uncaughtException', (err) => {
  if (err && (err.code === 'ECONNRESET' || err.code === 'ECONNABORTED' || err.message === 'aborted')) {
    console.error(`emulator: a client aborted a request (${err.code || err.message}); still serving`);
    return;
  }
  console.error(err);
  process.exit(1);
});
