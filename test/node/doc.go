// Package nodetest has one job: run the Node.js client-compatibility tests of
// this directory (BullMQ and ioredis, with node's built-in test runner)
// against keyfence from `go test`.
//
// Its test starts a real redis-server, an upstream ACL user per tenant, and
// one in-process keyfence per tenant (a and b), then runs `node --test` here
// with KF_A, KF_B (the two keyfence addresses) and REDIS_ADMIN (the real
// Redis, for the isolation checks) in its environment. node and the packages
// of package-lock.json are installed by `make test`
// (scripts/install-test-deps.sh); when they are missing the test fails and
// says so, it never skips.
package nodetest
