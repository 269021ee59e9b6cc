// Keeps a Node process's servers on the loopback interface. Loaded before NNI's manager by `sparsemask compare`
// (node --require, given through NODE_OPTIONS): the manager calls `app.listen(port)`, which Node binds on every
// interface, and serves its REST API and web UI without authentication. Here a listen() without a host, or with
// a wildcard host ('0.0.0.0', '::', ''), binds 127.0.0.1 instead; a listen() on a path, a handle or a file
// descriptor, or on an explicit non-wildcard host, is left as it is. `sparsemask compare` checks the manager's
// listening sockets after the start and stops it if any is bound elsewhere.
'use strict';

const net = require('net');

const LOOPBACK = '127.0.0.1';
const WILDCARDS = new Set([undefined, null, '', '0.0.0.0', '::', '0:0:0:0:0:0:0:0']);
const originalListen = net.Server.prototype.listen;

function isPort(value) {
  return typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value));
}

net.Server.prototype.listen = function listenOnLoopback(...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object') {
    // listen(options[, callback]); options with a path, fd or handle are not TCP ports
    const isTcp = first.path === undefined && first.fd === undefined && first.handle === undefined &&
      first._handle === undefined;
    if (isTcp && WILDCARDS.has(first.host)) {
      args[0] = Object.assign({}, first, { host: LOOPBACK });
    }
  } else if (args.length === 0 || first === undefined || first === null || isPort(first)) {
    // listen([port[, host[, backlog]]][, callback])
    if (args.length === 0) {
      args.push(0);
    }
    if (args.length === 1 || (typeof args[1] !== 'function' && typeof args[1] !== 'number' && WILDCARDS.has(args[1]))) {
      args[1] = LOOPBACK;
    } else if (typeof args[1] === 'function' || typeof args[1] === 'number') {
      args.splice(1, 0, LOOPBACK);  // listen(port, callback) / listen(port, backlog, ...)
    }
  }
  return originalListen.apply(this, args);
};
