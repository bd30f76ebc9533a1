// Package nodetest has one job: run the Node.js client-compatibility tests of
// this directory (BullMQ and ioredis, with node's built-in test runner)
// against keyfence from `go test`.
//
// Its tests start a real redis-server and keyfence in front of it, then run
// `node --test` here with KF_TENANTS (each tenant's id, keyfence address,
// protocol and, in gateway mode, credentials) and REDIS_ADMIN (the real
// Redis, for the isolation checks) in its environment, and scan the real
// Redis themselves once node has exited. TestNode runs two tenants in
// sidecar mode, one in-process keyfence each with its upstream ACL user;
// TestNodeGateway runs three tenants through one gateway keyfence, each
// application picking its tenant with ioredis's username and password.
// node and the packages of package-lock.json are installed by `make test`
// (scripts/install-test-deps.sh); when they are missing the tests fail and
// say so, they never skip.
package nodetest
