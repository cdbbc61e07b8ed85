'use strict';
// Preloaded into the test emulators with `node -r ./scripts/loopback.cjs`.
//
// kinesis-local always listens on 0.0.0.0, which would expose an unauthenticated
// Kinesis API to the whole network. This patch rewrites every TCP listen of the
// process (net, http, https and tls servers all inherit net.Server) so that it
// binds 127.0.0.1 whatever host the program asked for. Unix-socket and handle
// listens are left untouched.

const net = require('net');

const LOOPBACK = '127.0.0.1';
const originalListen = net.Server.prototype.listen;

function isPortLike(v) {
  return typeof v === 'number' || (typeof v === 'string' && /^[0-9]+$/.test(v));
}

net.Server.prototype.listen = function listenOnLoopback(...args) {
  if (args.length === 0 || typeof args[0] === 'function') {
    args.unshift(0); // listen([cb]): an ephemeral port.
  } else if (args[0] === undefined || args[0] === null) {
    args[0] = 0;
  }
  const first = args[0];
  if (typeof first === 'object') {
    // listen(options[, cb]) or listen(handle[, backlog][, cb]).
    const isTCPOptions = first.path === undefined && first.fd === undefined &&
      first._handle === undefined && first.handle === undefined;
    if (isTCPOptions) {
      args[0] = Object.assign({}, first, { host: LOOPBACK, ipv6Only: false });
    }
  } else if (isPortLike(first)) {
    // listen(port[, host][, backlog][, cb]).
    if (args.length < 2) {
      args.push(LOOPBACK);
    } else if (typeof args[1] === 'string' || args[1] === undefined || args[1] === null) {
      args[1] = LOOPBACK;
    } else {
      args.splice(1, 0, LOOPBACK);
    }
  }
  // Any other shape (a pipe path string) is not TCP and passes through.
  return originalListen.apply(this, args);
};
